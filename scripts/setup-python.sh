#!/usr/bin/env bash
# Creates .venv with what the tests and the onnxruntime backend need
# (idempotent): onnx (checker), onnxruntime 1.31 (its libonnxruntime.so
# serves `--backend ort`), numpy, sacrebleu (cross-checks), ctranslate2
# 4.8.5 (runs `export --ct2` outputs; adds ~40 s and ~150 MB).
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
