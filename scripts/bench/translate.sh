#!/usr/bin/env bash
# Benchmark (not a test): `admin-convert translate` on a synthetic corpus of
# N sentences (default 1,000,000: the fixture test split repeated), fed on
# stdin, showing that memory does not grow with the corpus. The resident set
# is sampled every second from /proc; the script prints it at each tenth of
# the run and the peak (ru_maxrss, GNU time).
#
#   scripts/bench/translate.sh     (env: N=1000000 BEAM=4 BUFFER=10000 THREADS=2)
#
# Model: fixtures/postln-fairseq012 (2+2, d=64), native engine, 2 threads.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-1000000}
BEAM=${BEAM:-4}
BUFFER=${BUFFER:-10000}
# ADMIN_CONVERT=path/to/binary skips the build (the dev profile is optimised too).
bin=${ADMIN_CONVERT:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=$(realpath "${CARGO_TARGET_DIR:-target}")/release/admin-convert
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The corpus is generated on the fly into the pipe: never stored.
corpus() {
  local n=0
  while [ "$n" -lt "$N" ]; do
    head -n "$((N - n))" fixtures/corpus/bpe/test.src
    n=$((n + 200))
  done
}
start=$(date +%s.%N)
corpus | /usr/bin/time -f '%M' -o "$work/maxrss" "$bin" translate \
  fixtures/postln-fairseq012/checkpoint_best.pt --dict-dir fixtures/data-bin \
  --beam "$BEAM" --buffer-size "$BUFFER" --threads "${THREADS:-2}" --remove-bpe >"$work/out" &
pipe_pid=$!
sleep 0.5
pid=$(pgrep -n -f "admin-convert translate fixtures/postln" || true)
: >"$work/rss"
while kill -0 "$pipe_pid" 2>/dev/null; do
  if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
    lines=$(wc -l <"$work/out")
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$rss" ] && echo "$lines $rss" >>"$work/rss"
  fi
  sleep 1
done
wait "$pipe_pid"
end=$(date +%s.%N)
lines=$(wc -l <"$work/out")
[ "$lines" -eq "$N" ] || { echo "error: $lines hypotheses for $N sentences" >&2; exit 1; }
echo "translate: $N sentences, beam $BEAM, buffer $BUFFER: $(echo "$end - $start" | bc) s"
echo "RSS (MiB) after each tenth of the corpus:"
awk -v n="$N" '{ t = int($1 * 10 / n); if (!(t in seen)) { seen[t] = 1; printf "  %7d sentences: %.1f\n", $1, $2 / 1024 } }
  END { }' "$work/rss"
awk '{ if (min == "" || $2 < min) min = $2; if ($2 > max) max = $2 } END { printf "RSS min %.1f MiB, max %.1f MiB over the run (after start-up)\n", min / 1024, max / 1024 }' "$work/rss"
echo "peak RSS (ru_maxrss): $(( $(cat "$work/maxrss") / 1024 )) MiB"
