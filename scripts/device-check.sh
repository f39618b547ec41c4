#!/usr/bin/env bash
# Device check (not a test): decodes the fixture models (and, with a Python
# that has fairseq, a random 32k-vocabulary Transformer-base) on CUDA through
# onnxruntime (fp32, fp16 graphs) and CTranslate2 (float32, float16), and on
# the CPU (native engine fp32 / int8, onnxruntime, CTranslate2 int8); prints
# target tokens/s, the hypotheses identical to the CPU native fp32 decode,
# and the peak GPU memory of each CUDA run. Budget: under 8 minutes.
#
#   scripts/device-check.sh [PEER_PYTHON]
#
# On a machine with an NVIDIA GPU (driver installed, `nvidia-smi` works):
# it creates its own venv (DEVICE_VENV, default .venv-device) and installs
# from PyPI onnxruntime-gpu with its CUDA / cuDNN wheels
# (`onnxruntime-gpu[cuda,cudnn]`) and ctranslate2 (its wheels carry CUDA 12).
# Without a GPU (or with CPU_ONLY=1) it runs the CPU half only, from the
# tests' .venv (scripts/setup-python.sh) and PEER_PYTHON's ctranslate2.
#
# CTranslate2 models are written by `admin-convert export --ct2`.
# PEER_PYTHON (default ../peer/bin/python) needs torch + fairseq: it builds
# the 32k model (random weights) and, on a CPU-only machine, runs
# CTranslate2; without it those rows are skipped (noted).
#
# Environment: BIN (an admin-convert binary; default: cargo build --release),
# N (sentences of the 32k model's set, default 100), BATCH (32), THREADS
# (CPU threads, default 2), MODELS (default: the four fixtures + base32k).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py=${1:-}
[ -n "$py" ] || { [ -x ../peer/bin/python ] && py=$(cd .. && pwd)/peer/bin/python; } || true
N=${N:-100}
B=${BATCH:-32}
T=${THREADS:-2}
start=$(date +%s)
gpu=0
if [ "${CPU_ONLY:-0}" != 1 ] && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then gpu=1; fi
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs, $T threads used"
if [ $gpu = 1 ]; then
  echo "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
else
  echo "no NVIDIA GPU (or CPU_ONLY=1): CPU half only"
fi

# ---- tools ---------------------------------------------------------------
scripts/setup-python.sh
if [ -n "${BIN:-}" ]; then
  bin=$(realpath "$BIN")
else
  cargo build --release --quiet
  bin=$(realpath "${CARGO_TARGET_DIR:-target}")/release/admin-convert
fi
peer=0
if [ -n "$py" ] && "$py" -c 'import fairseq, ctranslate2' 2>/dev/null; then peer=1; fi
[ $peer = 1 ] || echo "note: no Python with fairseq + ctranslate2: the 32k model skipped" >&2
runpy=$root/.venv/bin/python # runs CTranslate2 (CPU half)
if [ $gpu = 1 ]; then
  venv=${DEVICE_VENV:-$root/.venv-device}
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  if ! "$venv/bin/python" -c 'import onnxruntime, ctranslate2, numpy' 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      "onnxruntime-gpu[cuda,cudnn]==1.31.1" ctranslate2==4.8.5 numpy
  fi
  runpy=$venv/bin/python
  # The CUDA / cuDNN / cuBLAS libraries the nvidia-* wheels installed.
  libs=$("$venv/bin/python" - <<'PY'
import glob, os, site
dirs = []
for sp in site.getsitepackages():
    dirs += glob.glob(os.path.join(sp, "nvidia", "*", "lib"))
print(":".join(dirs))
PY
)
  export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  ORT_DYLIB_PATH=$(ls "$("$venv/bin/python" -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))')"/capi/libonnxruntime.so.* | head -1)
  export ORT_DYLIB_PATH
  "$venv/bin/python" -c 'import onnxruntime as o; p = o.get_available_providers(); print("onnxruntime", o.__version__, p); assert "CUDAExecutionProvider" in p'
elif [ -n "$py" ] && "$py" -c 'import ctranslate2' 2>/dev/null; then
  runpy=$py
fi
"$runpy" -c 'import ctranslate2' 2>/dev/null || runpy=""

work=$(mktemp -d)
trap 'rm -rf "$work"; [ -z "${smi:-}" ] || kill "$smi" 2>/dev/null || true' EXIT

# ---- models: name checkpoint data-bin ------------------------------------
models=("admin08 fixtures/admin-fairseq08/checkpoint_best.pt fixtures/data-bin-fairseq08"
  "admintorch012 fixtures/admintorch-fairseq012/checkpoint_best.pt fixtures/data-bin"
  "postln012 fixtures/postln-fairseq012/checkpoint_best.pt fixtures/data-bin"
  "postln0122 fixtures/postln-fairseq0122/checkpoint_best.pt fixtures/data-bin")
if [ $peer = 1 ] && [[ -z "${MODELS:-}" || " $MODELS " == *" base32k "* ]]; then
  # The 32k base: the bench's recipe (dictionary, N sentences, random weights).
  mkdir -p "$work/raw" "$work/dict"
  for side in src tgt; do
    for _ in $(seq $((N / 200 + 1))); do cat "fixtures/corpus/bpe/test.$side"; done | head -n "$N" >"$work/raw/synth.$side"
  done
  python3 - fixtures/data-bin/dict.src.txt fixtures/data-bin/dict.tgt.txt "$work/dict/dict.txt" <<'PY'
import sys
words = []
for f in sys.argv[1:3]:
    for line in open(f):
        w = line.split()[0]
        if w not in words:
            words.append(w)
i = 0
while len(words) < 32000 - 4:
    words.append(f"syn{i:05d}@@" if i % 2 else f"syn{i:05d}")
    i += 1
open(sys.argv[3], "w").write("".join(f"{w} 1\n" for w in words))
PY
  "$py" -m fairseq_cli.preprocess --source-lang src --target-lang tgt --testpref "$work/raw/synth" \
    --destdir "$work/bin32k" --srcdict "$work/dict/dict.txt" --tgtdict "$work/dict/dict.txt" --workers 1 >/dev/null 2>&1
  "$py" - fixtures/postln-fairseq012/checkpoint_best.pt "$work/bin32k" "$work/base32k.pt" >/dev/null 2>&1 <<'PY'
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
  models+=("base32k $work/base32k.pt $work/bin32k")
fi
if [ -n "${MODELS:-}" ]; then
  keep=()
  for m in "${models[@]}"; do [[ " $MODELS " == *" ${m%% *} "* ]] && keep+=("$m"); done
  models=("${keep[@]}")
fi

row() { printf '%-13s %-22s %9s %13s %12s  %s\n' "$@"; }
row model run "tok/s" "identical" "GPU MB" note
# Runs the command; its peak GPU memory (MB, nvidia-smi sampled every
# 100 ms) goes to $work/peak.
gpu_peak() {
  echo - >"$work/peak"
  [ $gpu = 1 ] || { "$@" || true; return; }
  local base
  base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  (while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; sleep 0.1; done) >"$work/smi" &
  smi=$!
  "$@" || true
  kill "$smi" 2>/dev/null || true
  wait "$smi" 2>/dev/null || true
  smi=""
  echo $(($(sort -n "$work/smi" | tail -1) - base)) >"$work/peak"
}
same() { # identical lines of two hypothesis files
  python3 -c 'import sys; a, b = (open(f).read().splitlines() for f in sys.argv[1:3]); print(f"{sum(x == y for x, y in zip(a, b))}/{len(a)}")' "$1" "$2"
}
eval_row() { # name label flags...
  local name=$1 label=$2
  shift 2
  local peak
  gpu_peak "$bin" eval "$ckpt" --data "$data" --beam 4 --batch-size "$B" "${extra[@]}" "$@" \
    --quiet --json -o "$work/$label.txt" >"$work/$label.json" 2>"$work/err"
  peak=$(cat "$work/peak")
  if [ -s "$work/$label.json" ] && [ -s "$work/$label.txt" ]; then
    row "$name" "$label" "$(python3 -c 'import json,sys; print("%.0f" % json.load(open(sys.argv[1]))["tokens_per_second"])' "$work/$label.json")" \
      "$(same "$work/cpu-fp32.txt" "$work/$label.txt")" "$peak" ""
  else
    row "$name" "$label" - - "$peak" "failed: $(tail -1 "$work/err")"
  fi
}
ct2_row() { # name label device compute_type
  local peak
  gpu_peak "$runpy" - "$work/ct2-$1" "$work/src.txt" "$B" "$T" "$3" "$4" "$work/$2.txt" >"$work/$2.tps" 2>"$work/err" <<'PY'
import sys, time, ctranslate2
model, src, b, t, device, ct, out = sys.argv[1:]
lines = [l.split() + ["</s>"] for l in open(src)]
tr = ctranslate2.Translator(model, device=device, intra_threads=int(t), compute_type=ct)
t0 = time.time()
res = tr.translate_batch(lines, beam_size=4, max_batch_size=int(b), max_decoding_length=41)
dt = time.time() - t0
open(out, "w").write("".join(" ".join(r.hypotheses[0]).replace("@@ ", "") + "\n" for r in res))
print(f"{sum(len(r.hypotheses[0]) + 1 for r in res) / dt:.0f}")
PY
  peak=$(cat "$work/peak")
  if [ -s "$work/$2.tps" ]; then
    row "$1" "$2" "$(cat "$work/$2.tps")" "$(same "$work/cpu-fp32.txt" "$work/$2.txt")" "$peak" ""
  else
    row "$1" "$2" - - "$peak" "failed: $(tail -1 "$work/err")"
  fi
}

for spec in "${models[@]}"; do
  read -r name ckpt data <<<"$spec"
  extra=(--remove-bpe)
  [ "$name" = base32k ] && extra+=(--max-len-b 40)
  # Source text for CTranslate2 (BPE'd, as fairseq reads it).
  if [ "$name" = base32k ]; then cp "$work/raw/synth.src" "$work/src.txt"; else cp fixtures/corpus/bpe/test.src "$work/src.txt"; fi
  eval_row "$name" cpu-fp32 --backend native --threads "$T"
  eval_row "$name" cpu-int8 --backend native --threads "$T" --compute-type int8
  eval_row "$name" cpu-ort --backend ort --threads "$T"
  if [ $gpu = 1 ]; then
    eval_row "$name" cuda-ort-fp32 --backend ort --device cuda
    eval_row "$name" cuda-ort-fp16 --backend ort --device cuda --fp16
  fi
  if [ -n "$runpy" ]; then
    # CTranslate2 directory written by admin-convert itself (no fairseq).
    "$bin" export "$ckpt" --ct2 -o "$work/ct2-$name" --dict-dir "$data" --force >/dev/null 2>"$work/err" ||
      row "$name" ct2-export - - - "failed: $(tail -1 "$work/err")"
    if [ -d "$work/ct2-$name" ]; then
      ct2_row "$name" ct2-cpu-int8 cpu int8
      if [ $gpu = 1 ]; then
        ct2_row "$name" ct2-cuda-fp32 cuda float32
        ct2_row "$name" ct2-cuda-fp16 cuda float16
      fi
    fi
  fi
done
echo "done in $(($(date +%s) - start)) s"
