"""vLLM backend: sampling and exact scoring on one vLLM engine (one copy of the weights).

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
next-token distributions, not their top-k. By default (``scoring="vllm"``) it runs on the same
engine: each (context, completion) pair is one request with ``prompt_logprobs=-1`` (every
vocabulary entry of every prompt row) and ``logprobs_mode="raw_logits"``, so the rows are the
model's logits, to which the backend applies the temperature and log-softmax as the HF backend does
(equal to it to ~1e-5 in float32 on the test model; vLLM's kernels are not transformers'). What makes
this affordable:

- vLLM's output processor would turn those rows into Python lists (one float and one int object per
  row and vocabulary entry); :class:`~.vllm_setup.PromptScoreCapture` takes them off the engine's
  outputs as tensors first and keeps only the completion rows.
- Requests go in groups of a bounded number of rows x vocabulary (vLLM materialises and sorts
  every scored row over the vocabulary), and each group's contexts are first prefilled once
  (without their last token) under a scoring-only cache salt. The scoring requests then read
  those contexts from the prefix cache: the context is forwarded once however many completions
  follow it, and its rows are never scored. vLLM skips the cache for prompt-logprob requests
  because cached rows are not computed, so every request's ``num_cached_tokens`` is checked: one
  whose cache hit reached past its context (another scored completion shared its first tokens)
  is scored again without the cache.

``scoring="twin"`` is the fallback: an exact teacher-forced pass on a transformers twin of the same
weights (:class:`~gradalign_engine.backends.hf.HFBackend` built from the same ModelSpec with
``backend='hf'``, on the device vLLM uses), loaded on the first ``score`` call, sharing this
backend's counters; it costs a second copy of the weights, and logs a warning saying so.

Process notes. Unless the environment says otherwise, vLLM runs inside this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``): deterministic, no worker process to leak, no
``if __name__ == '__main__'`` guard needed by callers. In that mode vLLM's CPU worker replaces
``torch.set_num_threads`` with a no-op for the whole process, and several engines share vLLM's
process-global distributed state, so an engine closed while others live is parked and shut down
with the last one. The KV cache is ``ModelSpec.vllm_kv_cache_bytes`` per GPU
(``kv_cache_memory_bytes``), never a fraction of device memory, and ``max_model_len`` is capped to
what that cache holds. A model too large for one GPU is split over ``vllm_tensor_parallel_size``
GPUs (``vllm_tensor_parallel_size``). On the CPU, chunked
prefill is off: vLLM 0.32's CPU runner fails on a seeded request whose prompt is split across
steps. ``close()`` shuts the engine down explicitly (an engine left running at interpreter exit may
abort the process); an ``atexit`` hook closes forgotten ones.

This module knows token ids and vLLM; it knows nothing of trees or teachers.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence

from ..config import ModelSpec
from ..errors import ConfigError
from ..models import model_digest, resolve_model, tokenizer_fingerprint
from .base import BranchRequest, CancelToken, ModelInfo, WorkCounters
from .vllm_scoring import VLLMScoring
from .vllm_setup import (
    ENGINES,
    branch_seed,
    check_device,
    close_at_exit,
    eos_ids,
    fitting_model_len,
    llm_kwargs,
)

__all__ = ["VLLMBackend", "branch_seed"]

log = logging.getLogger(__name__)

SCORING_MODES = ("vllm", "twin")


class VLLMBackend(VLLMScoring):
    """One model held by a vLLM engine, which samples and scores (a transformers twin scores only on request)."""

    name = "vllm"

    def __init__(self, spec: ModelSpec, *, scoring: str | None = None, max_model_len: int | None = None):
        """Load ``spec.model`` (a model directory or a built-in name) into a vLLM engine.

        ``scoring``: ``"vllm"`` (default) scores on the vLLM engine (:meth:`score_vllm`);
        ``"twin"`` on a transformers copy of the weights (:meth:`scorer`). Unset, it is
        ``spec.vllm_scoring``. ``max_model_len``: the longest
        prompt + completion; by default the model's, capped to what the KV cache holds.
        """
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from transformers import AutoConfig, AutoTokenizer

        self.spec = spec
        self.scoring = _scoring_mode(spec, scoring)
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
        cache = self._llm.llm_engine.vllm_config.cache_config
        # Prefix-cache hits come in whole blocks (128 tokens on the CPU, 16 on GPUs by default).
        self._cache_block = int(cache.block_size) if cache.enable_prefix_caching else None
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
        progress: Callable[[int, int], None] | None = None,
    ) -> list[list[list[int]]]:
        """See :meth:`Backend.generate`. ``temperature == 0`` decodes greedily.

        ``progress(samples_done, samples_total)`` is called as vLLM finishes each branch's samples.
        """
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
        total = sum(len(r.branches) * r.n for r in requests)
        done = [total - sum(n for _, _, n in slots)]  # the branches that ended without sampling

        def finished(j: int) -> None:
            done[0] += slots[j][2]
            progress(done[0], total)

        if prompts:
            outputs = self._run(prompts, params, cancel, on_finished=finished if progress is not None else None)
            self._collect(outputs, prompts, slots, results, greedy=temperature == 0)
        elif progress is not None:
            progress(total, total)
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

    def _run(self, prompts: list, params: list, cancel: CancelToken | None, capture=None, on_finished=None) -> list:
        """Submit all requests at once and step the engine, checking ``cancel`` between steps.

        ``capture``: a :class:`PromptScoreCapture` for the prompts, attached while the engine runs.
        ``on_finished(j)``: called when prompt j's request has finished.
        """
        with self._lock:
            llm = self.llm
            engine = llm.llm_engine
            if cancel is not None:
                cancel.raise_if_cancelled()
            # enqueue returns vLLM's internal ids ("<external>-<random>"); outputs carry the external id.
            ids = llm.enqueue(prompts, params, use_tqdm=False)
            done: dict[str, object] = {}
            steps = 0

            def output_of(rid: str):
                return done.get(rid) or done.get(rid.rsplit("-", 1)[0])

            slot_of: dict[str, int] = {}  # prompt index by internal and by external id
            for j, rid in enumerate(ids):
                slot_of[rid] = slot_of[rid.rsplit("-", 1)[0]] = j

            hook = capture.attached(engine, ids) if capture is not None else contextlib.nullcontext()
            try:
                with hook:
                    while engine.has_unfinished_requests():
                        if cancel is not None:
                            cancel.raise_if_cancelled()
                        for out in engine.step():
                            if out.finished:
                                done[out.request_id] = out
                                if on_finished is not None and out.request_id in slot_of:
                                    on_finished(slot_of[out.request_id])
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
        if self.scoring == "twin":
            return self.scorer().score(contexts, completions, temperature=temperature, cancel=cancel)
        return self.score_vllm(contexts, completions, temperature=temperature, cancel=cancel)

    def scorer(self):
        """The transformers twin that scores when ``scoring="twin"`` (loaded on first use; shares the counters)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("VLLMBackend is closed")
            if self._twin is None:
                from .hf import HFBackend

                log.warning(
                    "vLLM backend: scoring %s with a transformers twin because scoring=%r was asked for: a second copy "
                    "of the weights is loaded (scoring='vllm', the default, scores exactly on the vLLM engine itself)",
                    self.info.name,
                    self.scoring,
                )
                twin_spec = dataclasses.replace(
                    self.spec, backend="hf", device="cpu" if self.device == "cpu" else "cuda"
                )
                twin = HFBackend(twin_spec, tokenizer=self.tokenizer)
                if twin.info.model_hash != self.info.model_hash or twin.vocab_size != self.vocab_size:
                    raise RuntimeError("the transformers scoring twin does not match the vLLM model")
                twin.counters = self.counters
                self._twin = twin
            return self._twin

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


def _scoring_mode(spec: ModelSpec, scoring: str | None) -> str:
    mode = scoring if scoring is not None else spec.vllm_scoring
    if mode not in SCORING_MODES:
        raise ConfigError("vllm_scoring", mode, f"must be one of {', '.join(SCORING_MODES)}")
    if mode == "twin" and spec.vllm_tensor_parallel_size > 1:
        raise ConfigError(
            "vllm_scoring",
            mode,
            "the transformers twin holds the whole model on one device; with vllm_tensor_parallel_size > 1 score on "
            "vLLM ('vllm')",
        )
    return mode


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
