"""The identical MiniGoogLeNet in PyTorch, timed the same way as `pipe bench train`.

Usage: python benches/minigooglenet_torch.py BATCH STEPS [device]
Prints one JSON line: {"images_per_sec": ..., "threads": ..., "device": ...}.
Same layers as pipelines/networks/mini_googlenet.toml (Keras conventions: conv with bias,
BN momentum 0.99 / eps 1e-3, 'same' padding), SGD momentum 0.9, NHWC input 32x32x3.
"""
import json
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


class Inception(nn.Module):
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


class MiniGoogLeNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.body = nn.Sequential(
            ConvModule(3, 96, 3, 3),
            Inception(96, 32, 32), Inception(64, 32, 48), Downsample(80, 80),
            Inception(160, 112, 48), Inception(160, 96, 64), Inception(160, 80, 80),
            Inception(160, 48, 96), Downsample(144, 96),
            Inception(240, 176, 160), Inception(336, 176, 160),
            nn.AvgPool2d(7), nn.Dropout(0.5), nn.Flatten(), nn.Linear(336, classes),
        )

    def forward(self, x):
        return self.body(x)


def main():
    batch, steps = int(sys.argv[1]), int(sys.argv[2])
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    torch.manual_seed(0)
    model = MiniGoogLeNet().to(device)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    x = torch.randn(batch, 32, 32, 3, device=device).permute(0, 3, 1, 2).contiguous()
    y = torch.randint(0, 10, (batch,), device=device)
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
        "threads": torch.get_num_threads(),
        "device": device,
        "trainable_params": params,
    }))


if __name__ == "__main__":
    main()
