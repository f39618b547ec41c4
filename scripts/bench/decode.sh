#!/usr/bin/env bash
# Benchmark (not a test): decoding speed of `admin-convert eval` (beam 4,
# the 200 test sentences of fixtures/) on tract and onnxruntime, at several
# batch sizes, next to fairseq-generate on the same checkpoint when a
# Python with fairseq is available. Speeds are what each tool reports for
# decoding alone (model loading excluded on both sides).
#
#   scripts/bench/decode.sh [FAIRSEQ_PYTHON]    (default: ../peer/bin/python if present)
#
# Environment:
#   BIG=1        also a random Transformer-base-shaped model (6+6 layers,
#                d=512, FFN 2048, 8 heads; needs FAIRSEQ_PYTHON to make it),
#                decoded with --max-len-b 40
#   DEVICE=cuda  also onnxruntime on CUDA, fp32 and fp16 (onnxruntime-gpu)
#   BATCHES="1 16 64"   batch sizes
#
# Prints one table row per run: model, tool, batch size, sentences/s,
# tokens/s, and the metric line (identical hypotheses give identical BLEU).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-}
[ -n "$py" ] || { [ -x ../peer/bin/python ] && py=../peer/bin/python; } || true
batches=${BATCHES:-"1 16 64"}
cargo build --release --quiet
bin=$PWD/target/release/admin-convert
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
data=fixtures/data-bin

ort_ok=0
if "$bin" eval fixtures/postln-fairseq012/checkpoint_best.pt --data "$data" --beam 1 \
    --max-len-b 1 --batch-size 200 --backend ort --quiet >/dev/null 2>&1; then
  ort_ok=1
else
  echo "note: onnxruntime not found (ORT_DYLIB_PATH or a Python onnxruntime): tract only" >&2
fi
has_fairseq=0
if [ -n "$py" ] && "$py" -c 'import fairseq' 2>/dev/null; then has_fairseq=1; fi

models=("tiny:fixtures/postln-fairseq012/checkpoint_best.pt")
if [ "${BIG:-0}" = 1 ]; then
  [ $has_fairseq = 1 ] || { echo "BIG=1 needs a Python with fairseq" >&2; exit 2; }
  # fairseq builds (and randomly initialises) the model, so fairseq-generate loads it as is.
  "$py" - fixtures/postln-fairseq012/checkpoint_best.pt "$PWD/$data" "$work/big.pt" <<'PY'
import sys, torch
from fairseq import tasks
src, data, out = sys.argv[1:]
torch.manual_seed(0)
state = torch.load(src, map_location="cpu", weights_only=False)
cfg = state["cfg"]
m = cfg["model"]
for k, v in dict(encoder_embed_dim=512, decoder_embed_dim=512, encoder_ffn_embed_dim=2048,
                 decoder_ffn_embed_dim=2048, encoder_attention_heads=8, decoder_attention_heads=8,
                 encoder_layers=6, decoder_layers=6, decoder_output_dim=512, decoder_input_dim=512).items():
    setattr(m, k, v)
m.data = data  # cfg["model"] is the full training Namespace (task included)
task = tasks.setup_task(m)
state["model"] = task.build_model(m).state_dict()
torch.save(state, out)
PY
  models+=("base:$work/big.pt")
fi

row() { printf '%-5s %-24s %5s %10s %10s  %s\n' "$@"; }
row model tool batch "sent/s" "tok/s" metric
for entry in "${models[@]}"; do
  name=${entry%%:*}
  ckpt=${entry#*:}
  extra=()
  [ "$name" = base ] && extra=(--max-len-b 40)
  runs=("tract:--backend tract")
  [ $ort_ok = 1 ] && runs+=("ort-cpu:--backend ort")
  if [ "${DEVICE:-cpu}" = cuda ]; then
    runs+=("ort-cuda:--backend ort --device cuda" "ort-cuda-fp16:--backend ort --device cuda --fp16")
  fi
  for r in "${runs[@]}"; do
    tool=${r%%:*}
    read -r -a flags <<<"${r#*:}"
    for b in $batches; do
      "$bin" eval "$ckpt" --data "$data" --beam 4 --remove-bpe --batch-size "$b" \
        "${extra[@]}" "${flags[@]}" --json >"$work/out.json"
      python3 - "$work/out.json" "$name" "$tool" "$b" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
s = j["scores"]["bleu"]["string"] if j.get("scores") else ""
print(f"{sys.argv[2]:<5} {sys.argv[3]:<24} {sys.argv[4]:>5} {j['sentences_per_second']:>10.1f} {j['tokens_per_second']:>10.1f}  {s}")
PY
    done
  done
  if [ $has_fairseq = 1 ]; then
    for b in $batches; do
      "$py" -m fairseq_cli.generate "$data" --path "$ckpt" --beam 4 --batch-size "$b" \
        --remove-bpe --cpu --quiet "${extra[@]}" >"$work/fs.txt" 2>&1 || { tail -3 "$work/fs.txt" >&2; exit 1; }
      python3 - "$work/fs.txt" "$name" "$b" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
m = re.search(r"\(([\d.]+) sentences/s, ([\d.]+) tokens/s\)", t)
bleu = re.search(r"(BLEU4 = .*)", t)
print(f"{sys.argv[2]:<5} {'fairseq-generate (cpu)':<24} {sys.argv[3]:>5} {float(m[1]):>10.1f} {float(m[2]):>10.1f}  {bleu[1] if bleu else ''}")
PY
    done
  fi
done
