"""MiniGoogLeNet and DeeperGoogLeNet in PyTorch, timed the same way as `pipe bench step`.

Usage: python benches/googlenet_torch.py NETWORK BATCH STEPS [device] [eager|compile]
  NETWORK: mini (32x32x3, 10 classes) or deeper (64x64x3, 200 classes)
Prints one JSON line: {"images_per_sec", "peak_rss_mb", "threads", "device", ...}.
Same layers as pipelines/networks/*.toml (Keras conventions: conv with bias, BN momentum
0.99 / eps 1e-3, 'same' padding), SGD momentum 0.9, one warm-up step, then STEPS timed
steps of forward + backward + update on one fixed batch.
The faster of NCHW and channels-last is timed (on the CPU channels-last is usually
faster: oneDNN's blocked kernels). On a GPU: cudnn.benchmark, TF32 in convolutions unless
PIPE_CUDA_TF32=0, never in matrix products; `compile` times torch.compile too.
"""
import json
import os
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


def time_steps(model, x, y, steps, device, channels_last):
    """Images/s of STEPS timed SGD steps after one warm-up (two when compiled)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()  # warm-up (cudnn.benchmark measures here; torch.compile compiles here)
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device != "cpu":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t
    gpu_mb = torch.cuda.max_memory_allocated() / 1e6 if device != "cpu" else None
    return x.shape[0] * steps / secs, gpu_mb


def main():
    network, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
    # mode: "eager" (on a GPU: the faster of NCHW and channels-last, both with
    # cudnn.benchmark) or "compile" (torch.compile of the faster eager layout's model).
    mode = sys.argv[5] if len(sys.argv) > 5 else "eager"
    if device != "cpu":
        torch.backends.cudnn.benchmark = True
        # Precision rules shared with pipe: TF32 in convolutions as PIPE_CUDA_TF32 says
        # (default allowed, PyTorch's default too), never in matrix products.
        torch.backends.cudnn.allow_tf32 = os.environ.get("PIPE_CUDA_TF32", "1") != "0"
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    build = (lambda: mini_googlenet()) if network == "mini" else (lambda: deeper_googlenet())
    side, classes = (32, 10) if network == "mini" else (64, 200)
    x = torch.randn(batch, side, side, 3, device=device).permute(0, 3, 1, 2).contiguous()
    y = torch.randint(0, classes, (batch,), device=device)
    params = sum(p.numel() for p in build().parameters())
    layouts = [False, True]
    results = []
    for cl in layouts:
        torch.manual_seed(0)
        ips, mb = time_steps(build().to(device), x, y, steps, device, cl)
        results.append((ips, mb, "channels-last" if cl else "NCHW"))
    best = max(results)
    setting = "eager, " + best[2] + (", cudnn.benchmark" if device != "cpu" else "")
    if mode == "compile":
        torch.manual_seed(0)
        model = torch.compile(build().to(device))
        ips, mb = time_steps(model, x, y, steps, device, best[2] == "channels-last")
        best, setting = (ips, mb, best[2]), "torch.compile, " + best[2]
    out = {
        "images_per_sec": best[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "device": device,
        "torch": torch.__version__,
        "trainable_params": params,
        "setting": setting,
        "eager_layouts": {r[2]: r[0] for r in results},
    }
    if best[1] is not None:
        out["gpu_mb"] = best[1]
    if device != "cpu":
        out["tf32_convolutions"] = torch.backends.cudnn.allow_tf32
    print(json.dumps(out))


if __name__ == "__main__":
    main()
