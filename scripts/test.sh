#!/usr/bin/env bash
# The test suite, as CI runs it: installs the Python side (onnx checker,
# onnxruntime library) into .venv and torch, fairseq, transformers into
# .venv-torch, then runs every Rust test with the
# onnxruntime backend required (a missing library fails instead of skipping).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-python.sh
export ADMIN_CONVERT_PYTHON="$PWD/.venv/bin/python"
export ADMIN_CONVERT_TORCH_PYTHON="$PWD/.venv-torch/bin/python"
export ADMIN_CONVERT_REQUIRE_ORT=1
cargo test --all-targets "$@"
