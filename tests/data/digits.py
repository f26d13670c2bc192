"""Write scikit-learn's handwritten digits (1,797 real 8x8 images, shipped in its wheel) as
an image folder: <out>/<digit>/<index>.png, RGB, the 0..16 gray levels scaled to 0..255.

    python tests/data/digits.py OUT [LIMIT]
"""
import os
import struct
import sys
import zlib

from sklearn.datasets import load_digits


def png(path, w, h, rows):
    """A minimal RGB PNG (8 bits per channel, no filter)."""
    raw = b"".join(b"\x00" + r for r in rows)

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def main():
    out = sys.argv[1]
    digits = load_digits()
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else len(digits.target)
    for i, (img, label) in enumerate(zip(digits.images[:limit], digits.target[:limit])):
        folder = os.path.join(out, str(label))
        os.makedirs(folder, exist_ok=True)
        rows = [bytes(round(v * 255 / 16) for v in row for _ in range(3)) for row in img]
        png(os.path.join(folder, f"{i:04}.png"), 8, 8, rows)
    print(f"wrote {min(limit, len(digits.target))} digits to {out}")


if __name__ == "__main__":
    main()
