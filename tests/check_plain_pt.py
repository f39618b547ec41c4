"""Check `.pt` files written by `admin-convert average/cast -o X.pt`.

    python tests/check_plain_pt.py DATA_DIR|- X.pt [Y.pt ...]

1. `torch.load(X.pt, weights_only=True)` reads each file (no pickled classes) and `args`
   is None; prints its tensors, unique storage bytes and tied groups
   (`tied: a = b = c`).
2. Unless DATA_DIR is `-`, stock fairseq 0.12 loads the first file
   (`load_model_ensemble_and_task`, strict) and its model holds the file's tensors:
   prints `fairseq: loaded N tensors`; and CTranslate2's fairseq converter converts it
   (it reads `cfg['model']` by attribute): prints `ct2-fairseq-converter: ok`.
"""
import sys

import torch


def check(pt):
    ck = torch.load(pt, weights_only=True)
    assert ck["args"] is None, "args is not None"
    m = ck["model"]
    groups = {}
    for k, t in m.items():
        groups.setdefault(t.untyped_storage().data_ptr(), []).append(k)
    unique = sum(m[g[0]].untyped_storage().nbytes() for g in groups.values())
    print(f"{pt}: weights_only: {len(m)} tensors, {unique} unique bytes")
    for g in groups.values():
        if len(g) > 1:
            print("tied: " + " = ".join(g))
    return m


def main(data, pts):
    tensors = [check(pt) for pt in pts]
    if data == "-":
        return
    from fairseq import checkpoint_utils

    models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task(
        [pts[0]], arg_overrides={"data": data})
    sd = models[0].state_dict()
    for k, t in tensors[0].items():
        assert torch.equal(sd[k].to(t.dtype), t), f"fairseq's {k} differs from the file's"
    print(f"fairseq: loaded {len(tensors[0])} tensors")
    import tempfile

    from ctranslate2.converters.fairseq import FairseqConverter

    with tempfile.TemporaryDirectory() as out:
        FairseqConverter(pts[0], data).convert(out, force=True)
    print("ct2-fairseq-converter: ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
