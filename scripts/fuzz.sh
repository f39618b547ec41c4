#!/usr/bin/env bash
# The fuzz harness (tests/it/fuzz.rs) for a fixed time, by hand:
#   scripts/fuzz.sh --minutes N [--seed S] [--out DIR]
# Builds the test binary and admin-convert, runs private copies of both (so
# rebuilding meanwhile changes nothing), one worker at a time. Prints the
# summary line (mutants, mutants/s, inspect runs, largest child peak RSS,
# crashes); defects are saved as DIR/crash-*.bin with a .txt saying what.
# Exit status: 0 when no defect was found.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=10 seed=$(date +%s) out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: scripts/fuzz.sh --minutes N [--seed S] [--out DIR]" >&2; exit 2 ;;
  esac
done
case "$minutes" in ''|*[!0-9.]*) echo "error: --minutes wants a number, got '$minutes'" >&2; exit 2 ;; esac
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet --bin admin-convert
test_bin=$(cargo test --quiet --test it --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*\/it-[^"]*\)".*/\1/p' | tail -1)
[ -x "$test_bin" ] || { echo "error: could not find the test binary" >&2; exit 2; }
priv="$target/fuzz-bin.$$"
mkdir -p "$priv"
cp "$test_bin" "$priv/it"
cp "$target/debug/admin-convert" "$priv/admin-convert"
trap 'rm -rf "$priv"' EXIT
out="${out:-$target/fuzz-out}"
mkdir -p "$out"
seconds=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')
echo "fuzz: ${minutes} min, seed ${seed}, output in ${out}"
ADMIN_CONVERT_BIN="$priv/admin-convert" \
ADMIN_CONVERT_FUZZ_SECONDS="$seconds" \
ADMIN_CONVERT_FUZZ_SEED="$seed" \
ADMIN_CONVERT_FUZZ_DIR="$out" \
  "$priv/it" fuzz::smoke --exact --nocapture --test-threads 1
