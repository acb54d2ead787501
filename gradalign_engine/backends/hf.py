"""Hugging Face transformers backend (the default; CPU or GPU).

Sampling runs its own decoding loop over a KV cache rather than ``model.generate`` so that
(1) every prefix is encoded once and its cache expanded to all of its branches, (2) each request
samples from its own seeded generator, making results independent of how requests are batched,
and (3) finished rows leave the batch. Scoring returns exact full-vocabulary log-probabilities,
computing logits only at the completion positions.

This module knows token ids, tensors and transformers; it knows nothing of trees or teachers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from ..config import ModelSpec
from ..errors import ConfigError
from ..models import model_digest, resolve_model, tensor_digest, tokenizer_fingerprint
from . import hf_attention
from .base import BranchRequest, CancelToken, ModelInfo, WorkCounters
from .hf_cache import full_attention_only
from .hf_decode import ChunkDecoder, RetainedStore, chunk_start

__all__ = ["HFBackend", "resolve_device", "resolve_dtype"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# A long prefill or scoring pass is split along the sequence into forwards of about this many seconds,
# with a cancel check between them: a cancelled or expired request stops within about a second.
FORWARD_SLICE_SECONDS = 0.25
_MIN_SLICE_TOKENS = 256


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", device, "CUDA is not available on this machine")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    return _DTYPES[dtype]


class HFBackend:
    """One causal LM and its tokenizer, held resident."""

    name = "hf"

    def __init__(self, spec: ModelSpec, *, model=None, tokenizer=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec = spec
        self.device = resolve_device(spec.device)
        self.dtype = resolve_dtype(spec.dtype)
        resolved = resolve_model(spec.model) if model is None else None
        if tokenizer is None:
            kwargs = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
            tokenizer = AutoTokenizer.from_pretrained(resolved.path, **kwargs)
        if model is None:
            kwargs = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
            model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=self.dtype, **kwargs)
        self.model = model.to(self.device, dtype=self.dtype).eval()
        # Decoding steps attend to the prefix every row shares once, not once per row (CPU, SDPA models
        # whose layers are all full attention: a sliding window cannot hold a prefix outside it).
        self._shared_prefix_attention = full_attention_only(self.model.config) and hf_attention.install(self.model)
        self.tokenizer = tokenizer
        self.counters = WorkCounters()
        eos = set()
        for source in (tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, (list, tuple)):
                eos.update(int(x) for x in source)
        if not eos:
            raise ConfigError("model", spec.model, "tokenizer defines no end-of-sequence token")
        self._eos = frozenset(eos)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self._eos)
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        # Decoding calls the decoder and the output projection separately, to keep final hidden
        # states (a scoring pass over a sampled sequence then needs only the projection).
        self._decoder = self.model.get_decoder()
        self._head = self.model.get_output_embeddings()
        self._check_split_head()
        self._retained = RetainedStore(spec.prefix_cache_bytes)
        self._forward_rate: float | None = None  # tokens per second of recent multi-token forwards
        self.info = ModelInfo(
            name=resolved.name if resolved else spec.model,
            path=str(resolved.path) if resolved else spec.model,
            backend="hf",
            dtype=spec.dtype,
            device=str(self.device),
            model_hash=model_digest(resolved) if resolved else tensor_digest(self.model),
            tokenizer_hash=tokenizer_fingerprint(tokenizer),
            vocab_size=self.vocab_size,
        )

    def _check_split_head(self) -> None:
        ids = torch.tensor([[min(self._eos), 0, 1, 2]], device=self.device) % self.vocab_size
        with torch.inference_mode():
            full = self.model(input_ids=ids).logits[0, -1].float()
            split = self._head(self._decoder(input_ids=ids).last_hidden_state[0, -1]).float()
        if not torch.allclose(full, split, atol=1e-3, rtol=1e-3):
            raise ConfigError(
                "model",
                self.spec.model,
                "unsupported architecture: its logits are not the output embedding of the decoder's last hidden state",
            )

    def clear_prefix_cache(self) -> None:
        """Forget retained sequences (their KV and hidden states)."""
        self._retained.clear()

    # ------------------------------------------------------------------ properties
    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    @property
    def context_length(self) -> int | None:
        config = self.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        length = getattr(text_config, "max_position_embeddings", None)
        return int(length) if length else None

    def close(self) -> None:
        self.model = None

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def score(
        self,
        contexts: Sequence[Sequence[int]],
        completions: Sequence[Sequence[int]],
        *,
        temperature: float = 1.0,
        cancel: CancelToken | None = None,
    ) -> list[torch.Tensor]:
        if len(contexts) != len(completions):
            raise ValueError("contexts and completions differ in length")
        out: list[torch.Tensor | None] = [None] * len(contexts)
        todo = []
        for i, (c, y) in enumerate(zip(contexts, completions)):
            hidden = self._retained.hidden_for(c, y)
            if hidden is not None and len(y) > 0:
                # This exact sequence was sampled with retain=True: its hidden states are kept.
                out[i] = torch.log_softmax(self._head(hidden).float() / temperature, dim=-1).cpu()
                self.counters.add(scored_tokens=len(y))
            else:
                todo.append(i)
        order = sorted(todo, key=lambda i: len(contexts[i]) + len(completions[i]))
        # Logits are [rows, kept, vocab] float32: bound them as well as the token budget.
        logit_budget = max(self.spec.max_batch_tokens, 1) * 64
        batch: list[int] = []
        for idx in order + [None]:
            if idx is not None:
                trial = batch + [idx]
                width = max(len(contexts[i]) + len(completions[i]) for i in trial)
                keep = max(len(completions[i]) for i in trial) + 1
                fits = (
                    len(trial) * width <= self.spec.max_batch_tokens
                    and len(trial) * keep * self.vocab_size <= logit_budget * 1024
                )
                if fits or not batch:
                    batch = trial
                    continue
            if batch:
                if cancel is not None:
                    cancel.raise_if_cancelled()
                for i, lp in zip(
                    batch,
                    self._score_batch(
                        [contexts[i] for i in batch], [completions[i] for i in batch], temperature, cancel
                    ),
                ):
                    out[i] = lp
            batch = [idx] if idx is not None else []
        return out  # type: ignore[return-value]

    def _score_batch(self, contexts, completions, temperature: float, cancel=None) -> list[torch.Tensor]:
        seqs = [list(c) + list(y) for c, y in zip(contexts, completions)]
        width = max(len(s) for s in seqs)
        keep = max(len(y) for y in completions) + 1
        # Left padding puts every completion at the end, so only the last `keep` positions need logits.
        ids, mask = self._left_padded(seqs, width)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        _, hidden = self._sliced_forward(ids, mask, positions, None, keep, cancel)
        logits = self._head(hidden)
        self.counters.add(scored_tokens=sum(len(y) for y in completions))
        results = []
        for r, y in enumerate(completions):
            n = len(y)
            # logits[:, j] predicts token at absolute (width - keep + j + 1); completion token t sits at width - n + t.
            rows = logits[r, keep - n - 1 : keep - 1].float()
            results.append(torch.log_softmax(rows / temperature, dim=-1).cpu())
        return results

    # ------------------------------------------------------------------ sampling
    @torch.inference_mode()
    def generate(
        self,
        requests: Sequence[BranchRequest],
        *,
        temperature: float,
        top_p: float = 1.0,
        top_k: int = 0,
        cancel: CancelToken | None = None,
        retain: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[list[list[int]]]:
        """See :meth:`Backend.generate`. ``temperature == 0`` decodes greedily.

        ``retain=True`` keeps each sampled sequence's KV cache and final hidden states, so that later
        continuations from any of its prefixes skip the prefill, and ``score`` of exactly that
        (prompt, completion) needs only the output projection.
        """
        results: list[list[list[int]]] = [[] for _ in requests]
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].prefix))
        chunk: list[int] = []
        budget = self.spec.max_batch_tokens

        def cost(idxs: list[int]) -> int:
            rows = sum(len(requests[i].branches) * requests[i].n for i in idxs)
            width = max(len(requests[i].prefix) + requests[i].max_new_tokens + 1 for i in idxs)
            return rows * width

        total = sum(len(r.branches) * r.n for r in requests)
        done_before = 0

        def finished(rows_done: int) -> None:
            if progress is not None:
                progress(done_before + rows_done, total)

        for idx in order + [None]:
            if idx is not None and (not chunk or cost(chunk + [idx]) <= budget):
                chunk.append(idx)
                continue
            if chunk:
                batch = [requests[i] for i in chunk]
                outs = self._generate_chunk(batch, temperature, top_p, top_k, cancel, retain, finished)
                for i, o in zip(chunk, outs):
                    results[i] = o
                done_before += sum(len(r.branches) * r.n for r in batch)
                finished(0)
            chunk = [idx] if idx is not None else []
        return results

    def _forward(self, ids, mask, positions, cache, keep_last: bool, shared=None):
        """Decoder forward; returns (cache, final hidden states [rows, kept, H], logits of the last position).

        ``shared``: the KV of tokens before the cache's columns, for shared-prefix attention.
        """
        extra = {"shared_prefix": shared} if shared is not None else {}
        out = self._decoder(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True, **extra
        )
        hidden = out.last_hidden_state
        if keep_last:
            hidden = hidden[:, -1:, :]
        logits = self._head(hidden[:, -1, :]).float()
        self.counters.add(forwarded_tokens=int(mask[:, -ids.shape[1] :].sum()), forward_calls=1)
        return out.past_key_values, hidden, logits

    def _left_padded(self, seqs, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _slice_columns(self, rows: int) -> int:
        """Columns of one forward slice: about FORWARD_SLICE_SECONDS of work at the measured rate."""
        tokens = self.spec.max_batch_tokens
        if self.spec.forward_slice_tokens:
            tokens = min(tokens, self.spec.forward_slice_tokens)
        elif self._forward_rate is not None:
            tokens = min(tokens, max(_MIN_SLICE_TOKENS, int(self._forward_rate * FORWARD_SLICE_SECONDS)))
        return max(1, tokens // max(rows, 1))

    def _sliced_forward(self, ids, mask, positions, cache, keep: int, cancel):
        """Decoder over ``ids`` in column slices (cancel checked between them).

        Returns (cache, final hidden states of the last ``keep`` positions). One slice when the work
        fits (then no KV cache is built unless ``cache`` is given); each slice extends the KV cache.
        """
        from transformers import DynamicCache

        rows, width = ids.shape
        columns = self._slice_columns(rows)
        use_cache = cache is not None or columns < width
        if use_cache and cache is None:
            cache = DynamicCache(config=self.model.config)
        kept, start = [], 0
        while start < width:
            if cancel is not None and start > 0:
                cancel.raise_if_cancelled()
            end = min(width, start + columns)
            began = time.perf_counter()
            out = self._decoder(
                input_ids=ids[:, start:end],
                attention_mask=mask[:, :end],
                position_ids=positions[:, start:end],
                past_key_values=cache if use_cache else None,
                use_cache=use_cache,
            )
            self._observe_rate(rows * (end - start), time.perf_counter() - began)
            self.counters.add(forwarded_tokens=int(mask[:, start:end].sum()), forward_calls=1)
            cache = out.past_key_values if use_cache else None
            if end > width - keep:
                kept.append(out.last_hidden_state[:, max(0, width - keep - start) :, :])
            start = end
        return cache, kept[0] if len(kept) == 1 else torch.cat(kept, dim=1)

    def _observe_rate(self, tokens: int, seconds: float) -> None:
        if tokens >= _MIN_SLICE_TOKENS and seconds > 0:
            rate = tokens / seconds
            self._forward_rate = rate if self._forward_rate is None else 0.7 * self._forward_rate + 0.3 * rate

    def _prefix_states(self, prefixes: list[tuple[int, ...]], cancel=None):
        """KV slices ([layers] of (k, v) [kvh, L, d]) and last hidden state of each prefix.

        A prefix covered by a retained sequence is sliced from it; the others are encoded together
        in one left-padded batch.
        """
        states: list = [None] * len(prefixes)
        missing = []
        for i, p in enumerate(prefixes):
            hit = self._retained.lookup(p)
            if hit is not None:
                states[i] = hit
            else:
                missing.append(i)
        if missing:
            width = max(len(prefixes[i]) for i in missing)
            ids, mask = self._left_padded([prefixes[i] for i in missing], width)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            from transformers import DynamicCache

            cache, hidden = self._sliced_forward(
                ids, mask, positions, DynamicCache(config=self.model.config), 1, cancel
            )
            for r, i in enumerate(missing):
                n = len(prefixes[i])
                kv = [(layer.keys[r, :, width - n :, :], layer.values[r, :, width - n :, :]) for layer in cache.layers]
                states[i] = (kv, hidden[r, -1, :])
        return states

    def _generate_chunk(self, requests, temperature, top_p, top_k, cancel, retain, finished=None):
        """Decode one chunk from its distinct prefixes (:class:`~.hf_decode.ChunkDecoder`)."""
        if cancel is not None:
            cancel.raise_if_cancelled()
        prefixes = list(dict.fromkeys(tuple(req.prefix) for req in requests))
        states = self._prefix_states(prefixes, cancel)
        rows = sum(len(req.branches) * req.n for req in requests)
        columns = max(len(p) for p in prefixes) + max(req.max_new_tokens for req in requests)
        start = chunk_start(
            prefixes, states, self._head, self.model.config, self.device, rows, columns, self._shared_prefix_attention
        )

        def forward(ids, mask, positions, cache):
            cache, hidden, logits = self._forward(ids, mask, positions, cache, keep_last=True, shared=start.shared)
            return cache, hidden[:, -1, :], logits

        decoder = ChunkDecoder(forward, self.counters, self._eos, self.device, self._retained if retain else None)
        return decoder.run(requests, start, temperature, top_p, top_k, cancel, finished)
