#!/usr/bin/env bash
# The main job on the bundled fixtures: the Admin authors' own checkpoint
# (fairseq 0.8 fork, trained vector ω) → inspect → fold into a standard
# Post-LN model (the fold measures itself on the 200 test sentences) →
# export ONNX (fp32 + fp16) → teacher-forced parity of original and folded
# (native engine), exported (tract and onnxruntime) and fp16 against the
# fork's own --score-reference → beam-search parity with fairseq-generate.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-python.sh   # onnxruntime library for --backend ort
cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/admin-convert
fx=fixtures
out=${OUT_DIR:-target/demo}
mkdir -p "$out"
ckpt=$fx/admin-fairseq08/checkpoint_best.pt

echo "== inspect"
$bin inspect "$ckpt"

echo "== fold (checked on the test set)"
$bin fold "$ckpt" -o "$out/admin-folded.safetensors" --data $fx/data-bin-fairseq08

echo "== export ONNX"
$bin export "$out/admin-folded.safetensors" --onnx --fp16 -o "$out/admin-onnx" --force

echo "== teacher-forced parity (average log-prob per reference token, natural log)"
ref=$(grep -c '^H-' $fx/admin-fairseq08/score-reference.txt)
echo "fork's --score-reference: $ref sentences"
for m in "original|$ckpt|" "original-tract|$ckpt|--backend tract" "folded|$out/admin-folded.safetensors|" \
         "onnx-tract|$out/admin-onnx|" "onnx-ort|$out/admin-onnx|--backend ort" \
         "onnx-fp16|$out/admin-onnx|--fp16"; do
  IFS='|' read -r name model extra <<<"$m"
  # shellcheck disable=SC2086
  avg=$($bin score "$model" --data $fx/data-bin-fairseq08 --json $extra | python3 -c 'import json,sys; print("%.6f" % json.load(sys.stdin)["avg_token_logprob"])') || avg="(unavailable)"
  printf '  %-14s %s\n' "$name" "$avg"
done

echo "== beam 4: original (unfolded, native engine) vs the fork's fairseq-generate, and vs the folded ONNX export (tract)"
$bin eval "$ckpt" --data $fx/data-bin-fairseq08 --beam 4 --remove-bpe --quiet -o "$out/hyps.txt" \
  --expect-fairseq $fx/admin-fairseq08/generate-best.txt --compare "$out/admin-onnx"
echo "== beam 4: folded ONNX on onnxruntime vs fairseq-generate"
$bin eval "$out/admin-onnx" --backend ort --data $fx/data-bin-fairseq08 --beam 4 --remove-bpe --quiet \
  --expect-fairseq $fx/admin-fairseq08/generate-best.txt
echo "== beam 4: ONNX fp32 vs fp16"
$bin eval "$out/admin-onnx" --data $fx/data-bin-fairseq08 --beam 4 --remove-bpe --quiet \
  --compare "$out/admin-onnx" --compare-fp16
