"""MiniGoogLeNet and DeeperGoogLeNet in PyTorch, timed the same way as `pipe bench step`.

Usage: python benches/googlenet_torch.py NETWORK BATCH STEPS [device]
  NETWORK: mini (32x32x3, 10 classes) or deeper (64x64x3, 200 classes)
Prints one JSON line: {"images_per_sec", "peak_rss_mb", "threads", "device", ...}.
Same layers as pipelines/networks/*.toml (Keras conventions: conv with bias, BN momentum
0.99 / eps 1e-3, 'same' padding), SGD momentum 0.9, one warm-up step, then STEPS timed
steps of forward + backward + update on one fixed batch.
"""
import json
import resource
import sys
import time

import torch
import torch.nn as nn


class ConvModule(nn.Module):
    def __init__(self, cin, k, kx, ky, stride=1, padding="same"):
        super().__init__()
        pad = (kx // 2, ky // 2) if padding == "same" else 0
        self.conv = nn.Conv2d(cin, k, (kx, ky), stride=stride, padding=pad)
        self.bn = nn.BatchNorm2d(k, eps=1e-3, momentum=0.01)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class MiniInception(nn.Module):
    def __init__(self, cin, n1, n3):
        super().__init__()
        self.a = ConvModule(cin, n1, 1, 1)
        self.b = ConvModule(cin, n3, 3, 3)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


class Downsample(nn.Module):
    def __init__(self, cin, k):
        super().__init__()
        self.conv = ConvModule(cin, k, 3, 3, stride=2, padding="valid")
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat([self.conv(x), self.pool(x)], dim=1)


def mini_googlenet(classes=10):
    return nn.Sequential(
        ConvModule(3, 96, 3, 3),
        MiniInception(96, 32, 32), MiniInception(64, 32, 48), Downsample(80, 80),
        MiniInception(160, 112, 48), MiniInception(160, 96, 64), MiniInception(160, 80, 80),
        MiniInception(160, 48, 96), Downsample(144, 96),
        MiniInception(240, 176, 160), MiniInception(336, 176, 160),
        nn.AvgPool2d(7), nn.Dropout(0.5), nn.Flatten(), nn.Linear(336, classes),
    )


class Inception(nn.Module):
    def __init__(self, cin, n1, n3r, n3, n5r, n5, proj):
        super().__init__()
        self.first = ConvModule(cin, n1, 1, 1)
        self.second = nn.Sequential(ConvModule(cin, n3r, 1, 1), ConvModule(n3r, n3, 3, 3))
        self.third = nn.Sequential(ConvModule(cin, n5r, 1, 1), ConvModule(n5r, n5, 5, 5))
        self.fourth = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), ConvModule(cin, proj, 1, 1))

    def forward(self, x):
        return torch.cat([self.first(x), self.second(x), self.third(x), self.fourth(x)], dim=1)


def deeper_googlenet(classes=200):
    pool = lambda: nn.MaxPool2d(3, stride=2, padding=1)  # Keras 'same' on even sizes
    return nn.Sequential(
        ConvModule(3, 64, 5, 5), pool(),
        ConvModule(64, 64, 1, 1), ConvModule(64, 192, 3, 3), pool(),
        Inception(192, 64, 96, 128, 16, 32, 32), Inception(256, 128, 128, 192, 32, 96, 64), pool(),
        Inception(480, 192, 96, 208, 16, 48, 64), Inception(512, 160, 112, 224, 24, 64, 64),
        Inception(512, 128, 128, 256, 24, 64, 64), Inception(512, 112, 144, 288, 32, 64, 64),
        Inception(528, 256, 160, 320, 32, 128, 128), pool(),
        nn.AvgPool2d(4), nn.Dropout(0.4), nn.Flatten(), nn.Linear(832, classes),
    )


def main():
    network, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
    torch.manual_seed(0)
    if network == "mini":
        model, side, classes = mini_googlenet(), 32, 10
    else:
        model, side, classes = deeper_googlenet(), 64, 200
    model = model.to(device)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    x = torch.randn(batch, side, side, 3, device=device).permute(0, 3, 1, 2).contiguous()
    y = torch.randint(0, classes, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    step()  # warm-up
    if device != "cpu":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device != "cpu":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t
    print(json.dumps({
        "images_per_sec": batch * steps / secs,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "device": device,
        "torch": torch.__version__,
        "trainable_params": params,
    }))


if __name__ == "__main__":
    main()
