"""Write a CIFAR-10-shaped data set in the binary format (data_batch_1..5.bin, test_batch.bin,
batches.meta.txt): 50,000 + 10,000 32x32 RGB images whose class shifts their colour and
pattern, so a network can learn them. Numpy only.

Usage: python benches/gen_cifar10.py OUT_DIR [train_per_batch=10000] [test=10000]
"""
import os
import sys

import numpy as np


def images(rng, labels):
    n = len(labels)
    yy, xx = np.mgrid[0:32, 0:32]
    base = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.int16)
    for c in range(10):
        sel = labels == c
        stripes = ((xx * (c % 4 + 1) + yy * (c // 4 + 1)) % 16 < 8) * 90
        base[sel, c % 3] = (base[sel, c % 3] // 2 + stripes).astype(np.int16)
    return np.clip(base, 0, 255).astype(np.uint8)


def write(path, rng, n):
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    px = images(rng, labels).reshape(n, 3072)
    rec = np.concatenate([labels[:, None], px], axis=1)
    rec.tofile(path)


def main():
    out = sys.argv[1]
    per = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    test = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    for b in range(1, 6):
        write(os.path.join(out, f"data_batch_{b}.bin"), rng, per)
    write(os.path.join(out, "test_batch.bin"), rng, test)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(os.path.join(out, "batches.meta.txt"), "w") as f:
        f.write("\n".join(names) + "\n")


if __name__ == "__main__":
    main()
