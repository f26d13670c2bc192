"""The PyTorch side of `scripts/gpu-check` (d): a plain training loop for MiniGoogLeNet on
CIFAR-10 data, the way a Keras-style script does it, timed per epoch.

Usage: python benches/cifar_torch_loop.py H5_DIR BIN_DIR EPOCHS [batch=64]
  H5_DIR: a folder with the train/test .h5 files `pipe` wrote (read with h5py);
  BIN_DIR: the CIFAR-10 binary folder they came from, read instead when h5py is missing.
Per batch, on the CPU: per-pixel mean subtraction, random flips and shifts (up to 10 %),
then upload and an SGD step (momentum 0.9) on the GPU with cudnn.benchmark and the faster
eager layout (channels-last). Prints one JSON line per epoch with the training seconds
(validation excluded, as in pipe's per-epoch images/s).
"""
import glob
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(__file__))
from googlenet_torch import mini_googlenet  # noqa: E402


def load(data, bins):
    h5s = sorted(glob.glob(os.path.join(data, "**", "*.h5"), recursive=True))
    try:
        import h5py
    except ImportError:
        h5s = []
    if h5s:

        def read(*names):
            path = next(p for n in names for p in h5s if os.path.basename(p).startswith(n))
            with h5py.File(path, "r") as f:
                return f["images"][:], f["labels"][:].astype(np.int64), path

        return read("train"), read("val", "test")

    def read_bin(files):
        raw = np.concatenate([np.fromfile(f, dtype=np.uint8).reshape(-1, 3073) for f in files])
        x = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, raw[:, 0].astype(np.int64), files[0]

    train = read_bin(sorted(glob.glob(os.path.join(bins, "data_batch_*.bin"))))
    return train, read_bin([os.path.join(bins, "test_batch.bin")])


def main():
    data, bins, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = os.environ.get("PIPE_CUDA_TF32", "1") != "0"
    torch.backends.cuda.matmul.allow_tf32 = False
    (xtr, ytr, src), (xva, yva, _) = load(data, bins)
    mean = xtr.astype(np.float32).mean(axis=0)
    dev = os.environ.get("DEVICE", "cuda")
    torch.manual_seed(0)
    model = mini_googlenet().to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    n = len(ytr)
    for e in range(epochs):
        model.train()
        order = rng.permutation(n)
        t = time.perf_counter()
        for b0 in range(0, n, batch):
            idx = np.sort(order[b0:b0 + batch])
            x = xtr[idx].astype(np.float32) - mean
            flip = rng.random(len(idx)) < 0.5
            x[flip] = x[flip, :, ::-1]
            dy, dx = rng.integers(-3, 4, size=2)
            x = np.roll(x, (int(dy), int(dx)), axis=(1, 2))
            xt = torch.from_numpy(np.ascontiguousarray(x)).to(dev, non_blocking=True)
            xt = xt.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
            yt = torch.from_numpy(ytr[idx]).to(dev, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt), yt)
            loss.backward()
            opt.step()
        if dev == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t
        model.eval()
        correct = 0
        with torch.no_grad():
            for b0 in range(0, len(yva), 256):
                x = torch.from_numpy(xva[b0:b0 + 256].astype(np.float32) - mean).to(dev)
                p = model(x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last))
                correct += (p.argmax(1).cpu().numpy() == yva[b0:b0 + 256]).sum()
        print(json.dumps({
            "epoch": e + 1,
            "train_seconds": secs,
            "images_per_sec": n / secs,
            "val_acc": correct / len(yva),
            "source": src,
        }), flush=True)


if __name__ == "__main__":
    main()
