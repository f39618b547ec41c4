"""Decode a CTranslate2 directory written by `admin-convert export --ct2`
in the real ctranslate2 runtime (CPU) and compare with fairseq-generate.

    python tests/check_ct2.py DIR SRC_BPE GENERATE_TXT --beam N --lenpen X

SRC_BPE: one BPE'd source sentence per line (the test split, in id order).
GENERATE_TXT: fairseq-generate output run with --remove-bpe (H-<id> lines).
Sources go in as plain BPE tokens: no `</s>` added by hand (config.json
asks CTranslate2 to append it and to start the decoder from `</s>`).
Prints one JSON line: {"agree": n, "total": n, "mismatches": [...],
"max_score_diff": x, "max_forced_score_diff": y} (scores compared in nats
when the generate file is in base 2, as fairseq 0.12 prints them).
`max_score_diff` compares CTranslate2's beam-search scores (hypotheses cut at
the 200-token limit left out: fairseq scores the EOS it forces there,
CTranslate2 adds none); `max_forced_score_diff`
rescores the same hypotheses with CTranslate2's own teacher forcing
(`score_batch`: sum of token log-probs, EOS included, / len^lenpen as
fairseq), which checks the exported model itself: CTranslate2's
beam-search score of a hypothesis can differ from its own teacher-forced
score of the same tokens (admin-rezero-postln-fairseq08, lenpen 0.6:
beam scores within 2.7e-3 nats of fairseq's, teacher-forced within 1.2e-6).
"""
import argparse
import json
import math
import re

import ctranslate2


def remove_bpe(tokens):
    return (" ".join(tokens) + " ").replace("@@ ", "").rstrip()


def read_generate(path):
    hyps = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^H-(\d+)\t(\S+)\t(.*)$", line.rstrip("\n"))
            if m:
                hyps[int(m.group(1))] = (float(m.group(2)), m.group(3))
    return hyps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("src")
    ap.add_argument("generate")
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--lenpen", type=float, default=1.0)
    ap.add_argument("--base2", action="store_true", help="generate scores are base 2")
    ap.add_argument("--compute-type", default="default")
    ap.add_argument("--ref-text", help="plain references: also report sacreBLEU")
    args = ap.parse_args()
    with open(args.src, encoding="utf-8") as f:
        sources = [line.split() for line in f]
    ref = read_generate(args.generate)
    tr = ctranslate2.Translator(args.dir, device="cpu", compute_type=args.compute_type)
    out = tr.translate_batch(
        sources,
        beam_size=args.beam,
        length_penalty=args.lenpen,
        max_decoding_length=200,
        return_scores=True,
        max_batch_size=64,
    )
    agree, mismatches, max_diff = 0, [], 0.0
    agreed = []
    for i, r in enumerate(out):
        hyp = remove_bpe(r.hypotheses[0])
        score, text = ref[i]
        if args.base2:
            score *= math.log(2)
        if hyp == text:
            agree += 1
            agreed.append((i, r.hypotheses[0], score))
            # At the length limit fairseq forces an EOS (and scores it);
            # CTranslate2 stops without one: only the forced score compares.
            if len(r.hypotheses[0]) < 200:
                max_diff = max(max_diff, abs(r.scores[0] - score))
        else:
            mismatches.append({"id": i, "ct2": hyp, "fairseq": text, "ct2_score": r.scores[0], "fairseq_score": score})
    forced = tr.score_batch([sources[i] for i, _, _ in agreed], [h for _, h, _ in agreed],
                            max_batch_size=64) if agreed else []
    max_forced = 0.0
    for (i, _, score), f in zip(agreed, forced):
        lp = f.log_probs  # the hypothesis tokens and EOS
        max_forced = max(max_forced, abs(sum(lp) / len(lp) ** args.lenpen - score))
    report = {"ctranslate2": ctranslate2.__version__, "agree": agree, "total": len(out),
              "max_score_diff": max_diff, "max_forced_score_diff": max_forced,
              "mismatches": mismatches[:5]}
    if args.ref_text:
        import sacrebleu
        with open(args.ref_text, encoding="utf-8") as f:
            refs = [line.rstrip("\n") for line in f]
        sys_out = [remove_bpe(r.hypotheses[0]) for r in out]
        fs = [ref[i][1] for i in range(len(out))]
        report["sacrebleu"] = round(sacrebleu.corpus_bleu(sys_out, [refs]).score, 2)
        report["sacrebleu_fairseq"] = round(sacrebleu.corpus_bleu(fs, [refs]).score, 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
