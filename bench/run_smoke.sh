#!/usr/bin/env bash
# Run every bench script with --smoke (tiny models, a handful of rollouts: seconds each); CI calls this.
# Results go to bench/results/smoke/ (git-ignored), never over the committed bench/results/*.json.
#
# Environment: PYTHON (default .venv/bin/python at the repository root). In a venv without vllm,
# bench_vllm_vs_hf.py and bench_vllm_scoring.py print that they skip; PYTHON=.venv-vllm/bin/python runs them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-.venv/bin/python}"

start=$SECONDS
for bench in bench_buildtree time_buildtree profile_buildtree bench_exact_toy bound_exact_toy bench_vllm_vs_hf bench_vllm_scoring bench_html_report; do
    cmd=("$PYTHON" "bench/$bench.py" --smoke)
    echo "+ ${cmd[*]}"
    t0=$SECONDS
    "${cmd[@]}"
    echo "run_smoke: $bench passed ($((SECONDS - t0)) s)"
done
echo "run_smoke: all benches passed in $((SECONDS - start)) s"
