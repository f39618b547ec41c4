#!/usr/bin/env bash
# Benchmark (not a test): wall time and peak RSS of every command on a
# real-size model, the issue's admin-torch Transformer-big: 6+6 layers,
# d=1024, FFN 4096, 16 heads, 32k joined vocabulary (shared embeddings),
# 209M parameters = 0.84 GB of float32 weights, saved by torch with a
# fairseq 0.12 checkpoint's layout and Adam state (exp_avg, exp_avg_sq), so
# the file is ~2.5 GB. Random weights (ω = 1); the config, dictionary and
# naming are those of fixtures/admintorch-fairseq012 (fairseq 0.12 +
# admin-torch), scaled up.
#
#   scripts/bench/bigmodel.sh [PEER_PYTHON]   (default: ../peer/bin/python;
#                                              needs torch)
#
# Needs ~12 GB free disk in $TMPDIR (three checkpoints for `average`);
# WORK=dir builds them there once and reuses them on later runs.
# ADMIN_CONVERT=path/to/binary skips the build; ONLY="fold eval" runs a subset. Rows: command, wall seconds,
# peak RSS (MB, GNU time's ru_maxrss of the process), output size (MB).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-}
[ -n "$py" ] || py=$(cd .. && pwd)/peer/bin/python
bin=${ADMIN_CONVERT:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=$(realpath "${CARGO_TARGET_DIR:-target}")/release/admin-convert
fi
# WORK=dir keeps the built checkpoints there and reuses them on the next run.
if [ -n "${WORK:-}" ]; then
  work=$WORK
  mkdir -p "$work"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
out=${OUT:-$work} # OUT=dir: where the commands write (several runs can share one WORK)
mkdir -p "$out"
rm -rf "$out/folded.safetensors" "$out/onnx" "$out/avg.pt"
if [ -f "$work/checkpoint3.pt" ]; then
  echo "reusing the checkpoints in $work"
else
avail=$(df -Pk "$work" | awk 'NR == 2 {print $4}')
[ "$avail" -gt $((12 * 1024 * 1024)) ] || { echo "error: need 12 GB free in $work" >&2; exit 1; }

"$py" - fixtures/admintorch-fairseq012/checkpoint_best.pt "$work" <<'PY'
import copy, random, sys, torch
template, work = sys.argv[1:]
D, F, L, H, V = 1024, 4096, 6, 16, 32000
state = torch.load(template, map_location="cpu", weights_only=False)
scale = {64: D, 128: F, 144: V}
def big(name, t, seed):
    shape = [scale.get(s, s) for s in t.shape]
    if name.endswith("version"):
        return t.clone()
    if t.dim() == 1:  # LayerNorm gains and ω 1, biases 0
        return torch.ones(shape) if name.endswith(("norm.weight", "omega")) else torch.zeros(shape)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 0.02
m = state["model"]
def layer_keys(prefix, n):
    ks = [k for k in m if k.startswith(prefix + "0.")]
    return [(k.replace(prefix + "0.", f"{prefix}{i}."), k) for i in range(n) for k in ks]
order = []
for k in m:
    if ".layers." in k:
        continue
    order.append((k, k))
order = [o for o in order if o[0].startswith("encoder.")] \
    + layer_keys("encoder.layers.", L) + [o for o in order if o[0].startswith("decoder.")] \
    + layer_keys("decoder.layers.", L)
for o in [o for o in m if not o.startswith(("encoder.", "decoder."))]:
    order.append((o, o))
cfg = state["cfg"]["model"]
for k, v in dict(encoder_embed_dim=D, decoder_embed_dim=D, encoder_ffn_embed_dim=F,
                 decoder_ffn_embed_dim=F, encoder_attention_heads=H, decoder_attention_heads=H,
                 encoder_layers=L, decoder_layers=L, decoder_output_dim=D, decoder_input_dim=D).items():
    setattr(cfg, k, v)
cfg.data = work
if state.get("args") is not None:
    for k in vars(cfg):
        setattr(state["args"], k, getattr(cfg, k))
words = [f"w{i}" for i in range(V - 4)]
for side in ("src", "tgt"):
    with open(f"{work}/dict.{side}.txt", "w") as f:
        f.writelines(f"{w} 1\n" for w in words)
rng = random.Random(0)
for side in ("src", "tgt"):
    with open(f"{work}/test.{side}", "w") as f:
        for _ in range(100):
            f.write(" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) + "\n")
for n in range(3):
    model = {}
    for new, old in order:
        model[new] = big(new, m[old], (len(model) * 7919 + n) % (2**31))
    # shared embeddings: one tensor (fairseq saves them tied)
    model["decoder.embed_tokens.weight"] = model["encoder.embed_tokens.weight"]
    if "decoder.output_projection.weight" in model:
        model["decoder.output_projection.weight"] = model["encoder.embed_tokens.weight"]
    params = [v for k, v in model.items() if v.dim() > 0 and not k.endswith("version")]
    state["model"] = model
    state["last_optimizer_state"] = {
        "state": {i: {"step": torch.tensor(1000.0), "exp_avg": torch.zeros_like(p).normal_(0, 1e-3),
                      "exp_avg_sq": torch.zeros_like(p).uniform_(0, 1e-6)} for i, p in enumerate(params)},
        "param_groups": [{"lr": 5e-4, "betas": (0.9, 0.98), "eps": 1e-8, "weight_decay": 0.0,
                          "params": list(range(len(params)))}],
    }
    state["extra_state"] = dict(state.get("extra_state") or {}, train_iterator={"epoch": 40 + n})
    state["optimizer_history"][-1]["num_updates"] = 10000 * (n + 1)
    torch.save(state, f"{work}/checkpoint{n + 1}.pt")
    if n == 0:
        print(f"model: {sum(p.numel() for k, p in model.items() if k != 'decoder.embed_tokens.weight' and k != 'decoder.output_projection.weight' and not k.endswith('version')) / 1e6:.0f}M parameters")
PY
fi
ls -l "$work"/checkpoint1.pt | awk '{printf "file: %.2f GB\n", $5 / 1e9}'

row() { printf '%-14s %8s %10s %10s  %s\n' "$@"; }
row command "wall(s)" "RSS(MB)" "out(MB)" note
# ONLY="fold eval" runs a subset (names: inspect fold export average eval).
only=${ONLY:-"inspect fold export average eval"}
measure() {
  local name=$1 dst=$2 # dst: what the command writes (its size is reported)
  shift 2
  [[ " $only " == *" ${name%% *} "* ]] || return 0
  if /usr/bin/time -f '%e %M' -o "$out/time" "$@" >"$out/log" 2>&1; then
    read -r wall rss <"$out/time"
    size=$(du -sm "$dst" 2>/dev/null | cut -f1 || echo -)
    row "$name" "$wall" $((rss / 1024)) "${size:--}" ""
  else
    row "$name" - - - "failed: $(tail -1 "$out/log")"
  fi
}
ck=$work/checkpoint1.pt
measure inspect /dev/null "$bin" inspect "$ck"
measure fold "$out/folded.safetensors" "$bin" fold "$ck" -o "$out/folded.safetensors" \
  --src "$work/test.src" --ref "$work/test.tgt" --dict-dir "$work"
measure "export --onnx" "$out/onnx" "$bin" export "$ck" --onnx -o "$out/onnx" --dict-dir "$work"
measure average "$out/avg.pt" "$bin" average "$work/checkpoint1.pt" "$work/checkpoint2.pt" \
  "$work/checkpoint3.pt" -o "$out/avg.pt"
measure "eval (native)" /dev/null "$bin" eval "$ck" --src "$work/test.src" --ref "$work/test.tgt" \
  --dict-dir "$work" --beam 4 --max-len-b 20 --quiet
