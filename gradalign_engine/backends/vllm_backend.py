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
import logging
import os
import threading
import weakref
from collections.abc import Sequence

from ..config import ModelSpec
from ..errors import ConfigError
from ..models import model_digest, resolve_model, tokenizer_fingerprint
from .base import BranchRequest, CancelToken, ModelInfo, WorkCounters
from .vllm_setup import (
    ENGINES,
    branch_seed,
    check_device,
    close_at_exit,
    dense_prompt_logprobs,
    eos_ids,
    fitting_model_len,
    llm_kwargs,
)

__all__ = ["VLLMBackend", "branch_seed"]

log = logging.getLogger(__name__)


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
        from transformers import AutoConfig, AutoTokenizer

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
            raise ConfigError(
                "model",
                spec.model,
                "the vLLM backend loads Hugging Face model directories, not .gguf files; use backend 'hf' or a "
                "converted directory",
            )
        self.tokenizer = AutoTokenizer.from_pretrained(resolved.path)
        hf_config = AutoConfig.from_pretrained(resolved.path)
        self._eos = eos_ids(self.tokenizer, resolved.path, hf_config, spec.model)
        text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
        self.vocab_size = int(text_config.vocab_size)
        self.device = check_device(spec.device, _platform_device())
        self.max_model_len = max_model_len or fitting_model_len(text_config, spec)
        self._in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        self._llm = ENGINES.start(
            lambda: _new_llm(resolved.path, spec, self.device, self.max_model_len), in_process=self._in_process
        )
        self.info = ModelInfo(
            name=resolved.name,
            path=str(resolved.path),
            backend="vllm",
            dtype=spec.dtype,
            device=self.device,
            model_hash=model_digest(resolved),  # same digest as the HF backend: trees are portable
            tokenizer_hash=tokenizer_fingerprint(self.tokenizer),
            vocab_size=self.vocab_size,
        )
        atexit.register(close_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ properties
    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    @property
    def context_length(self) -> int | None:
        return self.max_model_len

    @property
    def twin_loaded(self) -> bool:
        """Whether the transformers scoring twin (a second copy of the weights) is in memory."""
        return self._twin is not None

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
        if cancel is not None:
            cancel.raise_if_cancelled()
        results: list[list[list[int] | None]] = [[None] * (len(r.branches) * r.n) for r in requests]
        prompts, params, slots = [], [], []  # slots[j] = (request index, first output slot, n)
        for i, req in enumerate(requests):
            for b, forced, occurrence in _branches(req):
                if req.max_new_tokens <= 0 or (forced is not None and forced in self._eos):
                    # No room left, or a forced end-of-sequence token: the completion has ended.
                    results[i][b * req.n : (b + 1) * req.n] = [[] for _ in range(req.n)]
                    continue
                prompts.append(self._branch_prompt(req, forced))
                params.append(self._sampling_params(req, forced, occurrence, temperature, top_p, top_k))
                slots.append((i, b * req.n, req.n))
        if prompts:
            self._collect(self._run(prompts, params, cancel), prompts, slots, results, greedy=temperature == 0)
        return results  # type: ignore[return-value]

    def _branch_prompt(self, req: BranchRequest, forced: int | None):
        from vllm.inputs import TokensPrompt

        ids = list(req.prefix) + ([forced] if forced is not None else [])
        if not ids:
            raise ValueError("vLLM needs a non-empty prompt (prefix + forced token)")
        if self.max_model_len is not None and len(ids) + req.max_new_tokens > self.max_model_len:
            raise ValueError(
                f"prompt ({len(ids)} tokens) + max_new_tokens ({req.max_new_tokens}) exceeds the vLLM context "
                f"({self.max_model_len} tokens; raise vllm_kv_cache_bytes or shorten the request)"
            )
        return TokensPrompt(prompt_token_ids=ids)

    def _sampling_params(self, req: BranchRequest, forced, occurrence: int, temperature, top_p, top_k):
        from vllm import SamplingParams

        greedy = temperature == 0
        return SamplingParams(
            n=1 if greedy else req.n,  # vLLM refuses n > 1 when greedy; greedy samples are identical
            seed=None if greedy else branch_seed(req.seed, forced, occurrence),
            temperature=0.0 if greedy else float(temperature),
            top_p=1.0 if greedy else float(top_p),
            top_k=0 if greedy or not top_k else int(top_k),  # 0 disables
            max_tokens=int(req.max_new_tokens),
            stop_token_ids=sorted(self._eos),
            detokenize=False,
            skip_special_tokens=False,
        )

    def _collect(self, outputs, prompts, slots, results, *, greedy: bool) -> None:
        """Place vLLM's outputs in their result slots and count the work."""
        generated = forwarded = 0
        for (i, start, n), prompt, out in zip(slots, prompts, outputs):
            samples = [list(c.token_ids) for c in sorted(out.outputs, key=lambda c: c.index)]
            generated += sum(len(s) for s in samples)  # greedy: one sample decoded, repeated n times
            if greedy:
                samples = [list(samples[0]) for _ in range(n)]
            results[i][start : start + n] = samples
            cached = getattr(out, "num_cached_tokens", None) or 0
            forwarded += max(len(prompt["prompt_token_ids"]) - cached, 0) + sum(len(c.token_ids) for c in out.outputs)
        self.counters.add(generated_tokens=generated, forwarded_tokens=forwarded)

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
                    if cancel is not None:
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

                twin_spec = dataclasses.replace(
                    self.spec, backend="hf", device="cpu" if self.device == "cpu" else "cuda"
                )
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
                raise ValueError(
                    f"context + completion ({len(ids)} tokens) exceed the vLLM context ({self.max_model_len})"
                )
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            # prompt_logprobs covers every prompt position; the context's rows are dropped afterwards.
            # (Selecting rows with prompt_logprob_start needs vLLM's V2 model runner, absent on CPU.)
            params.append(
                SamplingParams(
                    max_tokens=1,
                    temperature=0.0,
                    prompt_logprobs=-1,
                    flat_logprobs=True,
                    detokenize=False,
                )
            )
            owners.append(i)
        if prompts:
            results = self._run(prompts, params, cancel)
            scored = forwarded = 0
            for i, prompt, res in zip(owners, prompts, results):
                n = len(completions[i])
                rows = dense_prompt_logprobs(res.prompt_logprobs, len(contexts[i]), n, self.vocab_size)
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
        ENGINES.stop(llm, in_process=self._in_process)


def _platform_device() -> str:
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else str(current_platform.device_type or "cuda")


def _new_llm(path, spec: ModelSpec, device: str, max_model_len: int | None):
    from vllm import LLM

    return LLM(model=str(path), **llm_kwargs(spec, device, max_model_len))


def _branches(req: BranchRequest):
    """(branch index, forced token, earlier occurrences of that token) for each branch with samples."""
    seen: dict[int | None, int] = {}
    for b, forced in enumerate(req.branches):
        occurrence = seen[forced] = seen.get(forced, -1) + 1
        if req.n > 0:
            yield b, forced, occurrence
