#!/usr/bin/env bash
# Run the vLLM backend tests in their own virtual environment (.venv-vllm, made on first use).
#
# The main suite skips tests/test_vllm_backend.py (no vllm there); CI calls this after it.
# Extra arguments go to pytest (e.g. -x, -k NAME). First run: ~3 minutes of installs; then ~1 minute.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup_vllm_venv.sh
# vLLM's engine in this process: deterministic, and no worker process to leak (the backend's default too).
export VLLM_ENABLE_V1_MULTIPROCESSING="${VLLM_ENABLE_V1_MULTIPROCESSING:-0}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
exec "${VLLM_VENV:-.venv-vllm}/bin/python" -m pytest tests/test_vllm_backend.py -m vllm -q -p no:cacheprovider "$@"
