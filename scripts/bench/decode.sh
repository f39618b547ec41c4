#!/usr/bin/env bash
# Benchmark (not a test): beam-4 decoding speed and peak memory of
# `admin-convert eval` (native engine, tract and onnxruntime), CTranslate2 and
# fairseq-generate on the same model and sentences, side by side.
#
#   scripts/bench/decode.sh [PEER_PYTHON]     (default: ../peer/bin/python)
#
# PEER_PYTHON needs torch, fairseq, ctranslate2 (shared/reference/PEER.md);
# without it only admin-convert runs, on the fixture model.
#
# Models: "tiny" = fixtures/postln-fairseq012 (2+2, d=64); "base" = a
# randomly initialised Transformer-base (6+6, d=512, FFN 2048, 8 heads,
# built by fairseq itself) decoded with --max-len-b 40.
# Sentences: the 200 fixture test sentences, and a synthetic set of N
# sentences (the test split repeated, binarized by fairseq-preprocess).
#
# Environment: N (default 2000), BATCH (default 32), MODELS ("tiny base"),
# SETS ("test synth"), THREADS (default 2: native engine, onnxruntime,
# CTranslate2 and torch threads; tract runs single-threaded), DEVICE=cuda adds
# onnxruntime on CUDA (fp32, fp16).
#
# Each row: model, sentences, tool, sentences/s, target tokens/s (decoding
# only, as each tool reports it; CTranslate2 timed around translate_batch),
# peak RSS of the whole process, and the BLEU line (identical decodes give
# identical BLEU).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-}
[ -n "$py" ] || { [ -x ../peer/bin/python ] && py=$(cd .. && pwd)/peer/bin/python; } || true
N=${N:-2000}
B=${BATCH:-32}
T=${THREADS:-2}
scripts/setup-python.sh
cargo build --release --quiet
bin=$(realpath "${CARGO_TARGET_DIR:-target}")/release/admin-convert
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
peer=0
if [ -n "$py" ] && "$py" -c 'import fairseq, ctranslate2' 2>/dev/null; then peer=1; fi
[ $peer = 1 ] || echo "note: no Python with fairseq + ctranslate2: admin-convert only" >&2

# ---- data: test split, and N sentences made by repeating it -------------
sets=${SETS:-"test synth"}
mkdir -p "$work/raw"
cp fixtures/corpus/bpe/test.src fixtures/corpus/bpe/test.tgt "$work/raw/"
for side in src tgt; do
  : >"$work/raw/synth.$side"
  while [ "$(wc -l <"$work/raw/synth.$side")" -lt "$N" ]; do
    cat "fixtures/corpus/bpe/test.$side" >>"$work/raw/synth.$side"
  done
  head -n "$N" "$work/raw/synth.$side" >"$work/raw/s.$side" && mv "$work/raw/s.$side" "$work/raw/synth.$side"
done
declare -A dir=([test]=fixtures/data-bin)
if [[ " $sets " == *" synth "* ]]; then
  if [ $peer = 1 ]; then
    "$py" -m fairseq_cli.preprocess --source-lang src --target-lang tgt \
      --testpref "$work/raw/synth" --destdir "$work/synth-bin" \
      --srcdict fixtures/data-bin/dict.src.txt --tgtdict fixtures/data-bin/dict.tgt.txt \
      --workers 1 >/dev/null 2>&1
    cp fixtures/data-bin/dict.*.txt "$work/synth-bin/"
    dir[synth]=$work/synth-bin
  else
    sets="test"
  fi
fi

# ---- models -------------------------------------------------------------
declare -A ckpt=([tiny]=fixtures/postln-fairseq012/checkpoint_best.pt)
models=${MODELS:-"tiny base"}
if [[ " $models " == *" base "* ]]; then
  if [ $peer = 1 ]; then
    "$py" - fixtures/postln-fairseq012/checkpoint_best.pt "$PWD/fixtures/data-bin" "$work/base.pt" >/dev/null 2>&1 <<'PY'
import sys, torch
from fairseq import tasks
src, data, out = sys.argv[1:]
torch.manual_seed(0)
state = torch.load(src, map_location="cpu", weights_only=False)
m = state["cfg"]["model"]
for k, v in dict(encoder_embed_dim=512, decoder_embed_dim=512, encoder_ffn_embed_dim=2048,
                 decoder_ffn_embed_dim=2048, encoder_attention_heads=8, decoder_attention_heads=8,
                 encoder_layers=6, decoder_layers=6, decoder_output_dim=512, decoder_input_dim=512).items():
    setattr(m, k, v)
m.data = data
state["model"] = tasks.setup_task(m).build_model(m).state_dict()
torch.save(state, out)
PY
    ckpt[base]=$work/base.pt
  else
    models="tiny"
  fi
fi

row() { printf '%-5s %6s %-16s %8s %9s %9s  %s\n' "$@"; }
row model sents tool "sent/s" "tok/s" "RSS(MB)" metric
measure() { /usr/bin/time -f '%M' -o "$work/rss" "$@"; }
rss() { echo $(($(cat "$work/rss") / 1024)); }

for m in $models; do
  extra=()
  [ "$m" = base ] && extra=(--max-len-b 40)
  if [ $peer = 1 ]; then
    "$(dirname "$py")/ct2-fairseq-converter" --model_path "${ckpt[$m]}" --data_dir fixtures/data-bin \
      --output_dir "$work/ct2-$m" --unsafe_deserialization --force >/dev/null 2>&1 || echo "note: CTranslate2 conversion failed for $m" >&2
  fi
  for s in $sets; do
    n=$(if [ "$s" = test ]; then echo 200; else echo "$N"; fi)
    runs=("native:--backend native --threads $T" "tract:--backend tract" "onnxruntime:--backend ort --threads $T")
    [ "${DEVICE:-cpu}" = cuda ] && runs+=("ort-cuda:--backend ort --device cuda" "ort-cuda-fp16:--backend ort --device cuda --fp16")
    for r in "${runs[@]}"; do
      tool=${r%%:*}
      read -r -a flags <<<"${r#*:}"
      if measure "$bin" eval "${ckpt[$m]}" --data "${dir[$s]}" --beam 4 --remove-bpe --batch-size "$B" \
          "${extra[@]}" "${flags[@]}" --json --quiet >"$work/out.json" 2>"$work/err"; then
        read -r sps tps bleu < <(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("%.1f %.1f %s" % (j["sentences_per_second"], j["tokens_per_second"], j["scores"]["bleu"]["string"]))' "$work/out.json")
        row "$m" "$n" "admin-convert/$tool" "$sps" "$tps" "$(rss)" "$bleu"
      else
        row "$m" "$n" "admin-convert/$tool" - - - "failed: $(tail -1 "$work/err")"
      fi
    done
    [ $peer = 1 ] || continue
    if [ -d "$work/ct2-$m" ]; then
      measure "$py" - "$work/ct2-$m" "$work/raw/$s.src" "$B" "$T" "${extra[*]}" >"$work/ct2.txt" <<'PY' || true
import sys, time, ctranslate2
model, src, b, t, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
lines = [l.split() + ["</s>"] for l in open(src)]
tr = ctranslate2.Translator(model, device="cpu", intra_threads=t)
t0 = time.time()
res = tr.translate_batch(lines, beam_size=4, max_batch_size=b, max_decoding_length=41 if "40" in extra else 201)
dt = time.time() - t0
toks = sum(len(r.hypotheses[0]) + 1 for r in res)
print(f"{len(lines)/dt:.1f} {toks/dt:.1f}")
PY
      read -r sps tps <"$work/ct2.txt" || true
      row "$m" "$n" "ctranslate2" "${sps:--}" "${tps:--}" "$(rss)" "(fp32, $T threads)"
    fi
    OMP_NUM_THREADS=$T measure "$py" -m fairseq_cli.generate "${dir[$s]}" --path "${ckpt[$m]}" --beam 4 \
      --batch-size "$B" --remove-bpe --cpu --quiet "${extra[@]}" >"$work/fs.txt" 2>&1 || { tail -3 "$work/fs.txt" >&2; continue; }
    read -r sps tps bleu < <(python3 -c '
import re, sys
t = open(sys.argv[1]).read()
m = re.search(r"\(([\d.]+) sentences/s, ([\d.]+) tokens/s\)", t)
b = re.search(r"(BLEU4 = .*)", t)
print(m[1], m[2], b[1] if b else "")' "$work/fs.txt")
    row "$m" "$n" "fairseq-generate" "$sps" "$tps" "$(rss)" "$bleu"
  done
done
