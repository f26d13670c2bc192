"""Check an ONNX file exported by pipe with the real tools, and run it.

    onnx_check.py MODEL INPUT N H W OUTPUT

MODEL is checked by onnx.checker.check_model(full_check=True) (structure, opset, and
shape inference), then run by onnxruntime's CPU provider on INPUT (raw little-endian
float32, N x H x W x 3); the probabilities go to OUTPUT (raw float32, N x classes). Prints
one JSON line: the opset, the IR version, the output shape and the metadata keys.
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort

model_path, input_path, n, h, w, output_path = sys.argv[1:7]
n, h, w = int(n), int(h), int(w)
model = onnx.load(model_path)
onnx.checker.check_model(model, full_check=True)
session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
x = np.fromfile(input_path, dtype="<f4").reshape(n, h, w, 3)
(probs,) = session.run(["probabilities"], {"input": x})
probs.astype("<f4").tofile(output_path)
print(json.dumps({
    "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0],
    "ir_version": model.ir_version,
    "output": list(probs.shape),
    "metadata": sorted(p.key for p in model.metadata_props),
    "onnx": onnx.__version__,
    "onnxruntime": ort.__version__,
}))
