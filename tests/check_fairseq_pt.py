"""Check a fairseq `.pt` written by `admin-convert fold -o X.pt` in stock
fairseq 0.12, torch and CTranslate2's converter.

    python tests/check_fairseq_pt.py X.pt DATA_DIR GENERATE_TXT CT2_OUT [--base2]

1. `torch.load(X.pt, weights_only=True)` reads it; tied tables are one storage.
2. `ctranslate2.converters.FairseqConverter` converts it (no
   unsafe_deserialization) into CT2_OUT.
3. fairseq-generate (beam 4, --remove-bpe) on DATA_DIR gives the
   hypotheses of GENERATE_TXT. Prints `fairseq-generate: N/200`.
"""
import re
import subprocess
import sys

import torch


def hyps(text):
    out = {}
    for line in text.splitlines():
        m = re.match(r"^H-(\d+)\t(\S+)\t(.*)$", line)
        if m:
            out[int(m.group(1))] = m.group(3)
    return out


def main(pt, data, reference, ct2_out):
    ck = torch.load(pt, weights_only=True)
    m = ck["model"]
    print(f"torch.load(weights_only=True): {len(m)} tensors, cfg['model'].arch = {ck['cfg']['model'].arch}")
    pairs = [("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"),
             ("decoder.embed_tokens.weight", "decoder.output_projection.weight")]
    for a, b in pairs:
        if torch.equal(m[a], m[b]):
            assert m[a].data_ptr() == m[b].data_ptr(), f"{a} and {b} are equal but not tied"
            print(f"tied: {a} = {b}")
    from ctranslate2.converters.fairseq import FairseqConverter
    FairseqConverter(pt, data).convert(ct2_out, force=True)
    print("ct2-fairseq-converter (weights_only): ok")
    g = subprocess.run(
        [sys.executable, "-m", "fairseq_cli.generate", data, "--path", pt, "--gen-subset", "test",
         "--beam", "4", "--batch-size", "64", "--cpu", "--remove-bpe"],
        capture_output=True, text=True, check=True)
    got = hyps(g.stdout)
    with open(reference, encoding="utf-8") as f:
        ref = hyps(f.read())
    agree = sum(got.get(i) == h for i, h in ref.items())
    print(f"fairseq-generate: {agree}/{len(ref)}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
