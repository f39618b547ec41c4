#!/usr/bin/env bash
# Benchmark (not a test): wall time and peak RSS of `admin-convert average`
# for N = 5 and N = 20 copies of a ~100 MB fairseq checkpoint, next to
# fairseq's own averaging loop (scripts/average_checkpoints.py: torch.load
# each, upcast fp16, sum, divide) run by a Python with torch.
#
#   scripts/bench/average.sh [TORCH_PYTHON]     (default: ../peer/bin/python if present)
#
# The checkpoint is a fairseq-shaped state dict of random fp32 tensors
# written by torch.save (so both tools read the same real .pt files).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-}
[ -n "$py" ] || { [ -x ../peer/bin/python ] && py=../peer/bin/python; } || true
[ -n "$py" ] || { echo "need a Python with torch: scripts/bench/average.sh /path/to/python" >&2; exit 2; }
cargo build --release --quiet
bin=$(realpath "${CARGO_TARGET_DIR:-target}")/release/admin-convert
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" - "$work/base.pt" <<'PY'
import sys, torch, argparse
torch.manual_seed(0)
d, ffn, vocab, layers = 512, 2048, 8000, 3
sd = {"encoder.embed_tokens.weight": torch.randn(vocab, d)}
for s in ["encoder", "decoder"]:
    for i in range(layers):
        p = f"{s}.layers.{i}."
        for n in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"]:
            sd[p + n + ".weight"] = torch.randn(d, d); sd[p + n + ".bias"] = torch.randn(d)
        sd[p + "fc1.weight"] = torch.randn(ffn, d); sd[p + "fc2.weight"] = torch.randn(d, ffn)
sd["decoder.embed_tokens.weight"] = torch.randn(vocab, d)
sd["decoder.output_projection.weight"] = torch.randn(vocab, d)
torch.save({"args": argparse.Namespace(arch="transformer"), "model": sd,
            "optimizer_history": [], "extra_state": {}, "last_optimizer_state": None}, sys.argv[1])
PY
size=$(du -m "$work/base.pt" | cut -f1)
cat > "$work/fairseq_average.py" <<'PY'
import sys, collections, torch
inputs, out = sys.argv[1:-1], sys.argv[-1]
params, new_state = collections.OrderedDict(), None
for f in inputs:
    state = torch.load(f, map_location="cpu", weights_only=False)
    if new_state is None:
        new_state = state
    for k, p in state["model"].items():
        if p.dtype == torch.float16:
            p = p.float()
        params[k] = p.clone() if k not in params else params[k].add_(p)
for k, v in params.items():
    v.div_(len(inputs)) if v.is_floating_point() else v.floor_divide_(len(inputs))
new_state["model"] = params
torch.save(new_state, out)
PY
printf '%-4s %-28s %10s %12s\n' N tool "wall (s)" "peak RSS (MB)"
for n in 5 20; do
  for i in $(seq 1 "$n"); do cp "$work/base.pt" "$work/checkpoint$i.pt"; done
  files=$(for i in $(seq "$n" -1 1); do echo "$work/checkpoint$i.pt"; done)
  for tool in admin-convert fairseq-loop; do
    sync
    if [ $tool = admin-convert ]; then
      # shellcheck disable=SC2086
      /usr/bin/time -f '%e %M' -o "$work/t" "$bin" average $files -o "$work/avg.pt" --quiet >/dev/null
    else
      # shellcheck disable=SC2086
      /usr/bin/time -f '%e %M' -o "$work/t" "$py" "$work/fairseq_average.py" $files "$work/avg_ref.pt"
    fi
    read -r wall rss < "$work/t"
    printf '%-4s %-28s %10s %12s\n' "$n" "$tool" "$wall" "$((rss / 1024))"
  done
  rm -f "$work"/checkpoint*.pt
done
same=$("$py" -c '
import sys, torch
a = torch.load(sys.argv[1], weights_only=False)["model"]; b = torch.load(sys.argv[2], weights_only=False)["model"]
print("identical" if a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) else "DIFFERENT")' "$work/avg.pt" "$work/avg_ref.pt")
echo "checkpoint: ${size} MB; N=20 outputs of the two tools: ${same}"
