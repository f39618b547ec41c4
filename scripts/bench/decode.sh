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
# built by fairseq itself) decoded with --max-len-b 40; "base32k" = the same
# with a 32k-entry dictionary on both sides (the fixture words, then
# synthetic ones: output projection and softmax as on a real vocabulary);
# "big" = Transformer-big (6+6, d=1024, FFN 4096, 16 heads) with that 32k
# dictionary. All built by fairseq itself with random weights.
# Sentences: the 200 fixture test sentences, and a synthetic set of N
# sentences (the test split repeated, binarized by fairseq-preprocess; the
# 32k models decode only this set, binarized with their dictionary).
#
# Environment: N (default 2000), BATCH (default 32), MODELS ("tiny base";
# also base32k, big), SETS ("test synth"), THREADS (default 2: native engine,
# onnxruntime, CTranslate2 and torch threads; tract runs single-threaded),
# TOOLS (default "native tract onnxruntime ctranslate2 fairseq"),
# COMPUTE_TYPES (default "int8 bfloat16": extra native and CTranslate2 rows
# in these precisions; bfloat16 rows only where the CPU has AVX512_BF16),
# DEVICE=cuda adds onnxruntime on CUDA (fp32, fp16), BIN=path skips the
# release build and runs that admin-convert, WORK=dir keeps the data and
# checkpoints there (reused by the next run with the same WORK).
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
TOOLS=" ${TOOLS:-native tract onnxruntime ctranslate2 fairseq} "
CTS=${COMPUTE_TYPES:-int8 bfloat16}
has() { [[ "$TOOLS" == *" $1 "* ]]; }
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs online, $T threads used"
echo "CPU flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|fma|amx|f16c)' | sort | tr '\n' ' ')"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
scripts/setup-python.sh
if [ -n "${BIN:-}" ]; then
  bin=$(realpath "$BIN") # a binary already built (e.g. the optimised dev profile)
else
  cargo build --release --quiet
  bin=$(realpath "${CARGO_TARGET_DIR:-target}")/release/admin-convert
fi
if [ -n "${WORK:-}" ]; then
  work=$WORK # kept: its checkpoints and binarized sets are reused by the next run
  mkdir -p "$work"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
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
    # The 32k dictionary: the fixture words, then synthetic ones (fairseq
    # adds 4 specials: 32000 entries in all).
    mkdir -p "$work/dict32k"
    python3 - fixtures/data-bin/dict.src.txt fixtures/data-bin/dict.tgt.txt "$work/dict32k/dict.txt" <<'PY'
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
    "$py" -m fairseq_cli.preprocess --source-lang src --target-lang tgt \
      --testpref "$work/raw/synth" --destdir "$work/synth32k-bin" \
      --srcdict "$work/dict32k/dict.txt" --tgtdict "$work/dict32k/dict.txt" \
      --workers 1 >/dev/null 2>&1
    dir[synth32k]=$work/synth32k-bin
  else
    sets="test"
  fi
fi

# ---- models -------------------------------------------------------------
declare -A ckpt=([tiny]=fixtures/postln-fairseq012/checkpoint_best.pt)
declare -A mdata=([tiny]=fixtures/data-bin [base]=fixtures/data-bin)
models=${MODELS:-"tiny base"}
build() { # NAME DATA DIM FFN HEADS
  ckpt[$1]=$work/$1.pt
  mdata[$1]=$2
  [ -s "$work/$1.pt" ] && return # WORK=dir from an earlier run
  "$py" - fixtures/postln-fairseq012/checkpoint_best.pt "$(realpath "$2")" "$work/$1.pt" "$3" "$4" "$5" >/dev/null 2>&1 <<'PY'
import sys, torch
from fairseq import tasks
src, data, out, d, ffn, heads = sys.argv[1:]
d, ffn, heads = int(d), int(ffn), int(heads)
torch.manual_seed(0)
state = torch.load(src, map_location="cpu", weights_only=False)
m = state["cfg"]["model"]
for k, v in dict(encoder_embed_dim=d, decoder_embed_dim=d, encoder_ffn_embed_dim=ffn,
                 decoder_ffn_embed_dim=ffn, encoder_attention_heads=heads, decoder_attention_heads=heads,
                 encoder_layers=6, decoder_layers=6, decoder_output_dim=d, decoder_input_dim=d).items():
    setattr(m, k, v)
m.data = data
state["model"] = tasks.setup_task(m).build_model(m).state_dict()
torch.save(state, out + ".tmp")
PY
  mv "$work/$1.pt.tmp" "$work/$1.pt"
}
if [ $peer = 1 ]; then
  [[ " $models " == *" base "* ]] && build base fixtures/data-bin 512 2048 8
  if [[ " $models " == *" base32k "* || " $models " == *" big "* ]]; then
    [ -n "${dir[synth32k]:-}" ] || { echo "the 32k models need SETS to include synth" >&2; exit 2; }
  fi
  [[ " $models " == *" base32k "* ]] && build base32k "${dir[synth32k]}" 512 2048 8
  [[ " $models " == *" big "* ]] && build big "${dir[synth32k]}" 1024 4096 16
else
  models="tiny"
fi

row() { printf '%-7s %6s %-28s %8s %9s %9s  %s\n' "$@"; }
row model sents tool "sent/s" "tok/s" "RSS(MB)" metric
measure() { /usr/bin/time -f '%M' -o "$work/rss" "$@"; }
rss() { echo $(($(cat "$work/rss") / 1024)); }

for m in $models; do
  extra=()
  [ "$m" != tiny ] && extra=(--max-len-b 40)
  if [ $peer = 1 ] && has ctranslate2; then
    "$(dirname "$py")/ct2-fairseq-converter" --model_path "${ckpt[$m]}" --data_dir "${mdata[$m]}" \
      --output_dir "$work/ct2-$m" --unsafe_deserialization --force >/dev/null 2>&1 || echo "note: CTranslate2 conversion failed for $m" >&2
  fi
  msets=$sets
  case $m in base32k | big) msets=synth ;; esac
  for s in $msets; do
    n=$(if [ "$s" = test ]; then echo 200; else echo "$N"; fi)
    data=${dir[$s]}
    case $m in base32k | big) data=${dir[synth32k]} ;; esac
    runs=()
    if has native; then
      runs+=("native:--backend native --threads $T")
      for ct in $CTS; do runs+=("native-$ct:--backend native --threads $T --compute-type $ct"); done
    fi
    has tract && runs+=("tract:--backend tract")
    has onnxruntime && runs+=("onnxruntime:--backend ort --threads $T")
    [ "${DEVICE:-cpu}" = cuda ] && runs+=("ort-cuda:--backend ort --device cuda" "ort-cuda-fp16:--backend ort --device cuda --fp16")
    for r in "${runs[@]}"; do
      tool=${r%%:*}
      read -r -a flags <<<"${r#*:}"
      if measure "$bin" eval "${ckpt[$m]}" --data "$data" --beam 4 --remove-bpe --batch-size "$B" \
          "${extra[@]}" "${flags[@]}" --json --quiet >"$work/out.json" 2>"$work/err"; then
        read -r sps tps bleu < <(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("%.1f %.1f %s" % (j["sentences_per_second"], j["tokens_per_second"], j["scores"]["bleu"]["string"]))' "$work/out.json")
        row "$m" "$n" "admin-convert/$tool" "$sps" "$tps" "$(rss)" "$bleu"
      else
        row "$m" "$n" "admin-convert/$tool" - - - "failed: $(tail -1 "$work/err")"
      fi
    done
    [ $peer = 1 ] || continue
    # CTranslate2 on the CPU: float32 and int8 (its bfloat16 is GPU-only).
    for ct in float32 int8; do
      [ -d "$work/ct2-$m" ] || break
      measure "$py" - "$work/ct2-$m" "$work/raw/$s.src" "$B" "$T" "${extra[*]}" "$ct" >"$work/ct2.txt" 2>"$work/err" <<'PY' || true
import sys, time, ctranslate2
model, src, b, t, extra, ct = sys.argv[1:]
b, t = int(b), int(t)
lines = [l.split() + ["</s>"] for l in open(src)]
tr = ctranslate2.Translator(model, device="cpu", intra_threads=t, compute_type=ct)
t0 = time.time()
res = tr.translate_batch(lines, beam_size=4, max_batch_size=b, max_decoding_length=41 if "40" in extra else 201)
dt = time.time() - t0
toks = sum(len(r.hypotheses[0]) + 1 for r in res)
print(f"{len(lines)/dt:.1f} {toks/dt:.1f}")
PY
      sps=- tps=-
      read -r sps tps <"$work/ct2.txt" || true
      note="($T threads)"
      [ "$sps" != - ] || note="failed: $(tail -1 "$work/err")"
      row "$m" "$n" "ctranslate2-$ct" "$sps" "$tps" "$(rss)" "$note"
    done
    has fairseq || continue
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
