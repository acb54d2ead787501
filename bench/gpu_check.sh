#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): one run, about 8 minutes on one H200, results in
# bench/results/gpu_check.json. `--tiny` rehearses it on the CPU with tiny shapes.
# Python: $PYTHON, else .venv-vllm/bin/python when it exists (it has vLLM), else .venv/bin/python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=.venv/bin/python
    [[ -x .venv-vllm/bin/python ]] && PYTHON=.venv-vllm/bin/python
fi
export PYTHONUNBUFFERED=1 VLLM_ENABLE_V1_MULTIPROCESSING="${VLLM_ENABLE_V1_MULTIPROCESSING:-0}"
export PYTHONPATH="$ROOT:$ROOT/server:$ROOT/client:${PYTHONPATH:-}"
# The whole check must end inside the lease: 9 minutes at most, whatever a step does.
exec timeout 540 "$PYTHON" bench/gpu_check.py "$@"
