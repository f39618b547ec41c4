#!/usr/bin/env bash
# Creates .venv with what the tests and the onnxruntime backend need
# (idempotent): onnx (checker), onnxruntime 1.31 (its libonnxruntime.so
# serves `--backend ort`), numpy, sacrebleu (cross-checks), ctranslate2
# 4.8.5 (runs `export --ct2` outputs; adds ~40 s and ~150 MB), ray 2.60 (the
# Ray recipe scripts/ray_translate.py; adds ~50 s).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import onnx, onnxruntime, numpy, sacrebleu, ctranslate2' 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check \
    onnx==1.23.2 onnxruntime==1.31.1 numpy sacrebleu==2.6.0 safetensors ctranslate2==4.8.5
fi
# Ray runs scripts/ray_translate.py in tests/it/ray.rs (a local two-worker
# cluster). Separate step so an existing .venv gains it without reinstalling.
if ! .venv/bin/python -c 'import ray' 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check ray==2.60.0
fi
# .venv-torch: torch 2.5.1 (CPU use of the default PyPI wheel, which pulls
# the nvidia-* packages: ~3 GB), stock fairseq 0.12 (fairseq-fixed, built
# without build isolation so pip does not fetch a second torch),
# transformers 4.46.3 and ctranslate2: the runtimes of `fold -o X.pt` and
# `export --hf` (tests/check_fairseq_pt.py, tests/check_hf.py). Pins as in
# PEER.md: torch >= 2.6 refuses fairseq checkpoints' pickled Namespace.
TORCH_PY=.venv-torch/bin/python
if ! "$TORCH_PY" -c 'import torch, fairseq, transformers, ctranslate2
assert torch.__version__.startswith("2.5.1"), torch.__version__' 2>/dev/null; then
  [ -x "$TORCH_PY" ] || "$PY" -m venv .venv-torch
  constraints=$(mktemp)
  printf 'numpy<2\ntorch==2.5.1\ntorchaudio==2.5.1\n' >"$constraints"
  # Every step is constrained: fairseq's own requirements would otherwise
  # upgrade torch (and torchaudio) to the newest release.
  pip_t() {
    "$TORCH_PY" -m pip install --quiet --disable-pip-version-check -c "$constraints" "$@"
  }
  pip_t -U pip wheel
  pip_t torch==2.5.1 torchaudio==2.5.1
  pip_t "numpy<2" cython "setuptools<70" wheel
  pip_t --no-build-isolation fairseq-fixed==0.12.3.1
  pip_t transformers==4.46.3 ctranslate2==4.8.5 sacrebleu safetensors
  rm -f "$constraints"
fi
