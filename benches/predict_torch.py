"""`pipe predict`'s work in PyTorch, for `pipe bench predict`: the same trained network
(its `model.safetensors` loaded into the module of `googlenet_torch.py`), on the same
image files, prepared the same way (decode, RGB, subtract the training mean), in batches,
softmax, top-1.

Usage: python benches/predict_torch.py NETWORK MODEL_DIR ORDER_JSON LIST_FILE BATCH OUT_JSONL [MODE]
  NETWORK: mini
  MODEL_DIR: a train stage's artifact (model.safetensors with `input/mean`)
  ORDER_JSON: the network's parameterised nodes in graph order, [[name, op], ...]
  LIST_FILE: image paths, one per line
  MODE: eager (default: the faster of NCHW and channels-last, tried on one batch first) or
    compile (torch.compile of the channels-last model with inductor's freezing, which
    folds batch norm into the convolutions; compiled before the clock starts)
Writes one JSON line per image ({"path", "label", "p"}) to OUT_JSONL, and prints one JSON
line: images/s end to end (first file opened to last row written), images/s of the
forward passes alone (on the decoded batches), threads and peak RSS.

Loading pipe's weights into PyTorch (the README's "Using the model" does the same):
conv kernels are (kh, kw, cin, cout) -> permute(3, 2, 0, 1); dense kernels are (in, out)
-> transpose; batch norm: gamma, beta, moving_mean, moving_variance.
"""
import json
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from googlenet_torch import mini_googlenet  # noqa: E402


def load_pipe_weights(model, tensors, order):
    """Copy pipe's tensors into `model`'s Conv2d/BatchNorm2d/Linear modules, in order."""
    mods = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    if len(mods) != len(order):
        raise SystemExit(f"the torch module has {len(mods)} layers with weights, pipe's {len(order)}")
    with torch.no_grad():
        for m, (name, op) in zip(mods, order):
            if isinstance(m, nn.Conv2d):
                assert op == "conv2d", (name, op)
                m.weight.copy_(tensors[f"{name}/kernel"].permute(3, 2, 0, 1))
                if m.bias is not None:
                    m.bias.copy_(tensors[f"{name}/bias"])
            elif isinstance(m, nn.BatchNorm2d):
                assert op == "batchnorm", (name, op)
                m.weight.copy_(tensors[f"{name}/gamma"])
                m.bias.copy_(tensors[f"{name}/beta"])
                m.running_mean.copy_(tensors[f"{name}/moving_mean"])
                m.running_var.copy_(tensors[f"{name}/moving_variance"])
            else:
                assert op == "dense", (name, op)
                m.weight.copy_(tensors[f"{name}/kernel"].t())
                m.bias.copy_(tensors[f"{name}/bias"])


def main():
    network, model_dir, order_file, list_file, batch, out_file = sys.argv[1:7]
    mode = sys.argv[7] if len(sys.argv) > 7 else "eager"
    batch = int(batch)
    if network != "mini":
        raise SystemExit(f"no torch module for network `{network}`")
    tensors = load_file(os.path.join(model_dir, "model.safetensors"))
    order = json.load(open(order_file))
    model = mini_googlenet()
    load_pipe_weights(model, tensors, order)
    model.eval()
    mean = tensors["input/mean"].numpy().astype(np.float32)  # (3,) or (H, W, 3)
    paths = [p for p in open(list_file).read().splitlines() if p]
    side = 32
    trial = torch.randn(batch, 3, side, side)

    def per_sec(m, channels_last, x=trial):
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with torch.inference_mode():
            m(x)
            t = time.perf_counter()
            for _ in range(3):
                m(x)
        return 3 / (time.perf_counter() - t)

    compile_secs = None
    if mode == "compile":
        import torch._inductor.config as inductor

        inductor.freezing = True
        channels_last = True
        model = model.to(memory_format=torch.channels_last)
        t = time.perf_counter()
        model = torch.compile(model, dynamic=False)
        per_sec(model, True)
        if len(paths) % batch:  # the last, smaller batch compiles its own graph
            per_sec(model, True, trial[: len(paths) % batch])
        compile_secs = time.perf_counter() - t
        setting = "torch.compile, channels-last, freezing"
    else:
        nchw = per_sec(model, False)
        cl = per_sec(model.to(memory_format=torch.channels_last), True)
        channels_last = cl > nchw
        if not channels_last:
            model = model.to(memory_format=torch.contiguous_format)
        setting = "eager, " + ("channels-last" if channels_last else "NCHW")

    forward_secs = 0.0
    t0 = time.perf_counter()
    with torch.inference_mode(), open(out_file, "w") as out:
        for i in range(0, len(paths), batch):
            chunk = paths[i : i + batch]
            x = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in chunk])
            x = torch.from_numpy(x - mean).permute(0, 3, 1, 2)
            x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            f0 = time.perf_counter()
            probs = torch.softmax(model(x), dim=1)
            forward_secs += time.perf_counter() - f0
            p, label = probs.max(dim=1)
            for path, l, q in zip(chunk, label.tolist(), p.tolist()):
                out.write(json.dumps({"path": path, "label": l, "p": q}) + "\n")
    secs = time.perf_counter() - t0
    print(json.dumps({
        "images_per_sec": len(paths) / secs,
        "forward_images_per_sec": len(paths) / forward_secs,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__,
        "setting": setting,
        "compile_secs": compile_secs,
    }))


if __name__ == "__main__":
    main()
