"""Hugging Face transformers backend (the default; CPU or GPU).

Sampling runs its own decoding loop over a KV cache rather than ``model.generate`` so that
(1) every prefix is encoded once and its cache expanded to all of its branches, (2) each request
samples from its own seeded generator, making results independent of how requests are batched,
and (3) finished rows leave the batch. Scoring returns exact full-vocabulary log-probabilities,
computing logits only at the completion positions.

This module knows token ids, tensors and transformers; it knows nothing of trees or teachers.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import torch

from ..config import ModelSpec
from ..errors import ConfigError
from ..models import file_digest, resolve_model
from .base import BranchRequest, CancelToken, ModelInfo, WorkCounters

__all__ = ["HFBackend", "tokenizer_fingerprint", "resolve_device", "resolve_dtype"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", device, "CUDA is not available on this machine")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    return _DTYPES[dtype]


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over what decides token ids and prompts: vocabulary, special tokens, chat template."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "eos": tokenizer.eos_token_id,
        "bos": tokenizer.bos_token_id,
        "pad": tokenizer.pad_token_id,
        "template": getattr(tokenizer, "chat_template", None) or "",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _model_digest(resolved) -> str:
    if resolved.gguf_file:
        files = [resolved.path / resolved.gguf_file]
    else:
        files = sorted(p for p in resolved.path.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(file_digest(f).encode())
    return h.hexdigest()


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
        self.info = ModelInfo(
            name=resolved.name if resolved else spec.model,
            path=str(resolved.path) if resolved else spec.model,
            backend="hf",
            dtype=spec.dtype,
            device=str(self.device),
            model_hash=_model_digest(resolved) if resolved else _tensor_digest(self.model),
            tokenizer_hash=tokenizer_fingerprint(tokenizer),
            vocab_size=self.vocab_size,
        )

    # ------------------------------------------------------------------ properties
    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

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
        order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]) + len(completions[i]))
        # Logits are [rows, kept, vocab] float32: bound them as well as the token budget.
        logit_budget = max(self.spec.max_batch_tokens, 1) * 64
        batch: list[int] = []
        for idx in order + [None]:
            if idx is not None:
                trial = batch + [idx]
                width = max(len(contexts[i]) + len(completions[i]) for i in trial)
                keep = max(len(completions[i]) for i in trial) + 1
                fits = len(trial) * width <= self.spec.max_batch_tokens and len(trial) * keep * self.vocab_size <= logit_budget * 1024
                if fits or not batch:
                    batch = trial
                    continue
            if batch:
                if cancel is not None:
                    cancel.raise_if_cancelled()
                for i, lp in zip(batch, self._score_batch([contexts[i] for i in batch], [completions[i] for i in batch], temperature)):
                    out[i] = lp
            batch = [idx] if idx is not None else []
        return out  # type: ignore[return-value]

    def _score_batch(self, contexts, completions, temperature: float) -> list[torch.Tensor]:
        seqs = [list(c) + list(y) for c, y in zip(contexts, completions)]
        width = max(len(s) for s in seqs)
        keep = max(len(y) for y in completions) + 1
        # Left padding puts every completion at the end, so only the last `keep` positions need logits.
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep, use_cache=False).logits
        self.counters.add(forwarded_tokens=int(mask.sum()), scored_tokens=sum(len(y) for y in completions), forward_calls=1)
        results = []
        for r, y in enumerate(completions):
            n = len(y)
            # logits[:, j] predicts token at absolute (width - keep + j + 1); completion token t sits at width - n + t.
            rows = logits[r, keep - n - 1: keep - 1].float()
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
    ) -> list[list[list[int]]]:
        """See :meth:`Backend.generate`. ``temperature == 0`` decodes greedily."""
        results: list[list[list[int]]] = [[] for _ in requests]
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].prefix))
        chunk: list[int] = []
        budget = self.spec.max_batch_tokens

        def cost(idxs: list[int]) -> int:
            rows = sum(len(requests[i].branches) * requests[i].n for i in idxs)
            width = max(len(requests[i].prefix) + requests[i].max_new_tokens + 1 for i in idxs)
            return rows * width

        for idx in order + [None]:
            if idx is not None and (not chunk or cost(chunk + [idx]) <= budget):
                chunk.append(idx)
                continue
            if chunk:
                outs = self._generate_chunk([requests[i] for i in chunk], temperature, top_p, top_k, cancel)
                for i, o in zip(chunk, outs):
                    results[i] = o
            chunk = [idx] if idx is not None else []
        return results

    def _prefill(self, prefixes: list[tuple[int, ...]]):
        """Encode unique prefixes once (left-padded batch); return cache, mask and last logits."""
        from transformers import DynamicCache

        width = max(len(p) for p in prefixes)
        ids = torch.full((len(prefixes), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prefixes), width), dtype=torch.long)
        for r, p in enumerate(prefixes):
            ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
        self.counters.add(forwarded_tokens=int(mask.sum()), forward_calls=1)
        return out.past_key_values, mask, out.logits[:, -1, :].float()

    def _generate_chunk(self, requests, temperature, top_p, top_k, cancel) -> list[list[list[int]]]:
        if cancel is not None:
            cancel.raise_if_cancelled()
        unique: dict[tuple[int, ...], int] = {}
        for req in requests:
            unique.setdefault(tuple(req.prefix), len(unique))
        prefixes = list(unique)
        cache, prefix_mask, prefix_logits = self._prefill(prefixes)

        # Rows: one per (request, branch, sample).
        row_prefix, row_req, row_forced, row_limit = [], [], [], []
        for ri, req in enumerate(requests):
            for forced in req.branches:
                for _ in range(req.n):
                    row_prefix.append(unique[tuple(req.prefix)])
                    row_req.append(ri)
                    row_forced.append(forced)
                    row_limit.append(req.max_new_tokens)
        n_rows = len(row_req)
        gens = [torch.Generator(device="cpu").manual_seed(int(req.seed) % (2**63)) for req in requests]
        select = torch.tensor(row_prefix, device=self.device)
        _expand_cache(cache, select)
        mask = prefix_mask.index_select(0, select)
        next_pos = mask.sum(-1)  # position id of the next token per row
        tokens: list[list[int]] = [[] for _ in range(n_rows)]

        # First token: the forced candidate, or a sample from the prefix's last logits.
        first_logits = prefix_logits.index_select(0, select)
        sampled_first = self._sample(first_logits, row_req, gens, temperature, top_p, top_k)
        current = torch.tensor(
            [f if f is not None else s for f, s in zip(row_forced, sampled_first.tolist())], dtype=torch.long, device=self.device
        )
        active = list(range(n_rows))  # original row index of each batch row
        for r in range(n_rows):
            if row_forced[r] is None:
                tokens[r].append(int(current[r]))
        self.counters.add(generated_tokens=sum(1 for f in row_forced if f is None))

        def finished(r: int) -> bool:
            generated = tokens[r]
            return len(generated) >= row_limit[r] or (bool(generated) and generated[-1] in self._eos)

        done = [finished(r) for r in range(n_rows)]
        while True:
            keep = [b for b, r in enumerate(active) if not done[r]]
            if not keep:
                break
            if len(keep) < len(active):
                sel = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(sel)
                mask, current, next_pos = mask.index_select(0, sel), current.index_select(0, sel), next_pos.index_select(0, sel)
                active = [active[b] for b in keep]
            if cancel is not None:
                cancel.raise_if_cancelled()
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=self.device)], dim=1)
            out = self.model(
                input_ids=current[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                past_key_values=cache, use_cache=True,
            )
            cache = out.past_key_values
            next_pos = next_pos + 1
            self.counters.add(forwarded_tokens=len(active), forward_calls=1)
            step = self._sample(out.logits[:, -1, :].float(), [row_req[r] for r in active], gens, temperature, top_p, top_k)
            current = step
            values = step.tolist()
            for b, r in enumerate(active):
                tokens[r].append(values[b])
                done[r] = finished(r)
            self.counters.add(generated_tokens=len(active))

        out_lists: list[list[list[int]]] = [[] for _ in requests]
        for r in range(n_rows):
            out_lists[row_req[r]].append(tokens[r])
        return out_lists

    def _sample(self, logits: torch.Tensor, row_req: list[int], gens, temperature, top_p, top_k) -> torch.Tensor:
        if temperature == 0:
            return logits.argmax(-1)
        logits = logits / temperature
        if top_k and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if top_p < 1.0:
            sorted_p, sorted_idx = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, sorted_idx, sorted_p)
        probs = probs.cpu()
        out = torch.empty(len(row_req), dtype=torch.long)
        # Rows of one request draw from that request's generator, in row order: batching-independent.
        by_req: dict[int, list[int]] = {}
        for b, ri in enumerate(row_req):
            by_req.setdefault(ri, []).append(b)
        for ri, rows in by_req.items():
            idx = torch.tensor(rows)
            out[idx] = torch.multinomial(probs.index_select(0, idx), 1, generator=gens[ri]).squeeze(-1)
        return out.to(self.device)


def _expand_cache(cache, select: torch.Tensor) -> None:
    """Gather cache rows (prefix -> branch rows) in place; rows may repeat."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, select)
        layer.values = layer.values.index_select(0, select)


def _tensor_digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()
