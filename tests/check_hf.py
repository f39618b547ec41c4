"""Load an `admin-convert export --hf` directory with transformers'
AutoModelForSeq2SeqLM (CPU) and compare its `generate` with fairseq-generate.

    python tests/check_hf.py DIR SRC_BPE GENERATE_TXT --beam N --lenpen X

Sources are BPE tokens mapped through DIR/vocab-src.json, `</s>` appended
(what fairseq's encode_line does); the output ids are mapped back through
vocab-tgt.json. Prints one JSON line: {"class": ..., "agree": n, "total": n,
"mismatches": [...]}.
"""
import argparse
import json
import os
import re

import torch
from transformers import AutoModelForSeq2SeqLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("src")
    ap.add_argument("generate")
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--lenpen", type=float, default=1.0)
    args = ap.parse_args()
    m = AutoModelForSeq2SeqLM.from_pretrained(args.dir).eval()
    with open(os.path.join(args.dir, "vocab-src.json"), encoding="utf-8") as f:
        vs = json.load(f)
    with open(os.path.join(args.dir, "vocab-tgt.json"), encoding="utf-8") as f:
        vt = {i: t for t, i in json.load(f).items()}
    ref = {}
    with open(args.generate, encoding="utf-8") as f:
        for line in f:
            g = re.match(r"^H-(\d+)\t\S+\t(.*)$", line.rstrip("\n"))
            if g:
                ref[int(g.group(1))] = g.group(2)
    with open(args.src, encoding="utf-8") as f:
        sources = [[vs.get(t, 3) for t in line.split()] + [2] for line in f]
    agree, mism = 0, []
    with torch.no_grad():
        for i in range(0, len(sources), 32):
            chunk = sources[i:i + 32]
            n = max(len(s) for s in chunk)
            ids = torch.tensor([s + [1] * (n - len(s)) for s in chunk])
            mask = (ids != 1).long()
            out = m.generate(input_ids=ids, attention_mask=mask, num_beams=args.beam,
                             length_penalty=args.lenpen, max_new_tokens=200, do_sample=False,
                             early_stopping=True)
            for j, row in enumerate(out.tolist()):
                toks = [vt[t] for t in row[1:] if t not in (1, 2)]
                hyp = (" ".join(toks) + " ").replace("@@ ", "").rstrip()
                k = i + j
                if hyp == ref[k]:
                    agree += 1
                else:
                    mism.append({"id": k, "hf": hyp, "fairseq": ref[k]})
    print(json.dumps({"class": type(m).__name__, "agree": agree, "total": len(sources), "mismatches": mism[:3]}))


if __name__ == "__main__":
    main()
