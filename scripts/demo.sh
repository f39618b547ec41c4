#!/usr/bin/env bash
# The main job on the bundled fixtures: build the release binary, inspect
# the Admin authors' checkpoint, fold its ω into a standard Post-LN model
# (the fold measures itself), and inspect the result.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/admin-convert
out=${OUT_DIR:-target/demo}
mkdir -p "$out"
$bin inspect fixtures/admin-fairseq08/checkpoint_best.pt
if $bin --help | grep -q '^  fold'; then
  $bin fold fixtures/admin-fairseq08/checkpoint_best.pt -o "$out/admin-folded.safetensors" \
    --dict-dir fixtures/data-bin
  $bin inspect "$out/admin-folded.safetensors"
fi
