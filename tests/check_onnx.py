"""Validate an `admin-convert export` directory with the reference ONNX tools.

    python tests/check_onnx.py DIR

For every *.onnx: onnx.checker.check_model(full_check=True); then runs the
encoder and one decoder step in Python onnxruntime (CPU) on a left-padded
batch and checks shapes and that log-probs are normalised. Prints one line
per graph; exits non-zero on any failure.
"""
import glob
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main(d):
    paths = sorted(glob.glob(os.path.join(d, "*.onnx")))
    assert paths, f"no .onnx files in {d}"
    for p in paths:
        onnx.checker.check_model(p, full_check=True)
        print(f"checker ok: {os.path.basename(p)}")
    for suffix in ["", "_fp16"]:
        enc_path = os.path.join(d, f"encoder{suffix}.onnx")
        if not os.path.exists(enc_path):
            continue
        enc = ort.InferenceSession(enc_path, providers=["CPUExecutionProvider"])
        dec = ort.InferenceSession(os.path.join(d, f"decoder{suffix}.onnx"), providers=["CPUExecutionProvider"])
        src = np.array([[1, 1, 10, 11, 2], [12, 13, 14, 15, 2]], dtype=np.int64)
        out = dict(zip([o.name for o in enc.get_outputs()], enc.run(None, {"src_tokens": src})))
        feeds = {"prev_token": np.full((2, 1), 2, dtype=np.int64), "step": np.array([0], dtype=np.int64)}
        for i in dec.get_inputs():
            if i.name in out:
                feeds[i.name] = out[i.name]
            elif i.name.startswith("self_"):
                k = out["cross_k_0"]
                feeds[i.name] = np.zeros((2, k.shape[1], 0, k.shape[3]), dtype=k.dtype)
        res = dict(zip([o.name for o in dec.get_outputs()], dec.run(None, feeds)))
        lp = res["lprobs"].astype(np.float64)
        total = np.exp(lp).sum(axis=-1)
        assert np.allclose(total, 1.0, atol=1e-3), total
        print(f"onnxruntime {ort.__version__} ok: encoder{suffix} + decoder{suffix} step, lprobs {lp.shape}")


if __name__ == "__main__":
    main(sys.argv[1])
