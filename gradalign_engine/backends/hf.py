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
from collections import OrderedDict
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
        # Decoding calls the decoder and the output projection separately, to keep final hidden
        # states (a scoring pass over a sampled sequence then needs only the projection).
        self._decoder = self.model.get_decoder()
        self._head = self.model.get_output_embeddings()
        self._check_split_head()
        self._retained = _RetainedStore(spec.prefix_cache_bytes)
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

    def _check_split_head(self) -> None:
        ids = torch.tensor([[min(self._eos), 0, 1, 2]], device=self.device) % self.vocab_size
        with torch.inference_mode():
            full = self.model(input_ids=ids).logits[0, -1].float()
            split = self._head(self._decoder(input_ids=ids).last_hidden_state[0, -1]).float()
        if not torch.allclose(full, split, atol=1e-3, rtol=1e-3):
            raise ConfigError("model", self.spec.model, "unsupported architecture: its logits are not the output embedding of the decoder's last hidden state")

    def clear_prefix_cache(self) -> None:
        """Forget retained sequences (their KV and hidden states)."""
        self._retained.clear()

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
        retain: bool = False,
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

        for idx in order + [None]:
            if idx is not None and (not chunk or cost(chunk + [idx]) <= budget):
                chunk.append(idx)
                continue
            if chunk:
                outs = self._generate_chunk([requests[i] for i in chunk], temperature, top_p, top_k, cancel, retain)
                for i, o in zip(chunk, outs):
                    results[i] = o
            chunk = [idx] if idx is not None else []
        return results

    def _forward(self, ids, mask, positions, cache, keep_last: bool):
        """Decoder forward; returns (cache, final hidden states [rows, kept, H], logits of the last position)."""
        out = self._decoder(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state
        if keep_last:
            hidden = hidden[:, -1:, :]
        logits = self._head(hidden[:, -1, :]).float()
        self.counters.add(forwarded_tokens=int(mask[:, -ids.shape[1]:].sum()), forward_calls=1)
        return out.past_key_values, hidden, logits

    def _prefix_states(self, prefixes: list[tuple[int, ...]]):
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
            from transformers import DynamicCache

            width = max(len(prefixes[i]) for i in missing)
            ids = torch.full((len(missing), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(missing), width), dtype=torch.long)
            for r, i in enumerate(missing):
                p = prefixes[i]
                ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[r, width - len(p):] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            cache, hidden, _ = self._forward(ids, mask, positions, DynamicCache(config=self.model.config), keep_last=True)
            for r, i in enumerate(missing):
                n = len(prefixes[i])
                kv = [(layer.keys[r, :, width - n:, :], layer.values[r, :, width - n:, :]) for layer in cache.layers]
                states[i] = (kv, hidden[r, -1, :])
        return states

    def _generate_chunk(self, requests, temperature, top_p, top_k, cancel, retain) -> list[list[list[int]]]:
        """Decode logical rows (request x branch x sample) over shared physical rows.

        Rows whose token histories are identical share one physical row (one cache row, one forward);
        a physical row splits only when its rows sample different tokens. Every distinct prefix is
        therefore forwarded once, whatever the number of branches and samples through it.
        """
        from transformers import DynamicCache

        if cancel is not None:
            cancel.raise_if_cancelled()
        unique: dict[tuple[int, ...], int] = {}
        for req in requests:
            unique.setdefault(tuple(req.prefix), len(unique))
        prefixes = list(unique)
        states = self._prefix_states(prefixes)
        width = max(len(p) for p in prefixes)
        layers = len(states[0][0])
        keys, values = [], []
        for layer in range(layers):
            k0 = states[0][0][layer][0]
            kb = k0.new_zeros((len(prefixes), k0.shape[0], width, k0.shape[2]))
            vb = kb.clone()
            for i, (kv, _) in enumerate(states):
                n = kv[layer][0].shape[1]
                kb[i, :, width - n:, :] = kv[layer][0]
                vb[i, :, width - n:, :] = kv[layer][1]
            keys.append(kb)
            values.append(vb)
        cache = DynamicCache(ddp_cache_data=list(zip(keys, values)), config=self.model.config)
        mask = torch.zeros((len(prefixes), width), dtype=torch.long, device=self.device)
        for i, p in enumerate(prefixes):
            mask[i, width - len(p):] = 1
        next_pos = mask.sum(-1)
        hidden = torch.stack([h for _, h in states])  # [phys, H]: predicts each row's next token
        logits = self._head(hidden).float()

        # Logical rows.
        row_req, row_forced, row_limit, row_phys = [], [], [], []
        for ri, req in enumerate(requests):
            for forced in req.branches:
                for _ in range(req.n):
                    row_req.append(ri)
                    row_forced.append(forced)
                    row_limit.append(req.max_new_tokens)
                    row_phys.append(unique[tuple(req.prefix)])
        n_rows = len(row_req)
        gens = [torch.Generator(device="cpu").manual_seed(int(req.seed) % (2**63)) for req in requests]
        tokens: list[list[int]] = [[] for _ in range(n_rows)]
        hiddens: list[list[torch.Tensor]] = [[] for _ in range(n_rows)]
        done = [False] * n_rows
        for r in range(n_rows):
            # A forced end-of-sequence token, or no room left, ends the row before any sampling.
            if row_limit[r] <= 0 or (row_forced[r] is not None and row_forced[r] in self._eos):
                done[r] = True
        pending_forced = list(row_forced)
        active = [r for r in range(n_rows) if not done[r]]
        while active:
            if cancel is not None:
                cancel.raise_if_cancelled()
            free = [r for r in active if pending_forced[r] is None]
            choice: dict[int, int] = {}
            if free:
                sampled = self._sample(logits, [row_phys[r] for r in free], [row_req[r] for r in free], gens, temperature, top_p, top_k)
                for r, t in zip(free, sampled):
                    choice[r] = t
                    tokens[r].append(t)
                    if retain:
                        hiddens[r].append(hidden[row_phys[r]])
                self.counters.add(generated_tokens=len(free))
            for r in active:
                if pending_forced[r] is not None:
                    choice[r] = pending_forced[r]
                    pending_forced[r] = None
            still = []
            for r in active:
                generated = tokens[r]
                if generated and (len(generated) >= row_limit[r] or generated[-1] in self._eos):
                    done[r] = True
                    if retain:
                        self._retain_row(requests[row_req[r]].prefix, generated, hiddens[r], cache, mask, row_phys[r])
                else:
                    still.append(r)
            active = still
            if not active:
                break
            # New physical rows: one per distinct (parent row, next token).
            new_index: dict[tuple[int, int], int] = {}
            parents, step_tokens = [], []
            for r in active:
                key = (row_phys[r], choice[r])
                if key not in new_index:
                    new_index[key] = len(parents)
                    parents.append(row_phys[r])
                    step_tokens.append(choice[r])
                row_phys[r] = new_index[key]
            if parents != list(range(mask.shape[0])):
                sel = torch.tensor(parents, device=self.device)
                _select_cache(cache, sel)
                mask, next_pos = mask.index_select(0, sel), next_pos.index_select(0, sel)
            mask = torch.cat([mask, torch.ones((len(parents), 1), dtype=mask.dtype, device=self.device)], dim=1)
            ids = torch.tensor(step_tokens, dtype=torch.long, device=self.device)[:, None]
            cache, h, logits = self._forward(ids, mask, next_pos[:, None], cache, keep_last=True)
            hidden = h[:, -1, :]
            next_pos = next_pos + 1

        out_lists: list[list[list[int]]] = [[] for _ in requests]
        for r in range(n_rows):
            out_lists[row_req[r]].append(tokens[r])
        return out_lists

    def _retain_row(self, prefix, generated, hiddens, cache, mask, phys: int) -> None:
        """Keep a finished sequence's KV (all but its last token) and its per-token hidden states."""
        valid = mask[phys].bool()
        kv = [(layer.keys[phys][:, valid, :].clone(), layer.values[phys][:, valid, :].clone()) for layer in cache.layers]
        self._retained.add(tuple(prefix) + tuple(generated), len(prefix), kv, torch.stack(hiddens) if hiddens else None)

    def _sample(self, logits: torch.Tensor, phys: list[int], row_req: list[int], gens, temperature, top_p, top_k) -> list[int]:
        """One token per logical row, each drawn from its request's generator (batching-independent)."""
        logits = logits.index_select(0, torch.tensor(phys, device=logits.device))
        if temperature == 0:
            return logits.argmax(-1).tolist()
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
        # Inverse-CDF sampling with one uniform per row from its request's generator: the same law as
        # torch.multinomial, batching-independent, and one vectorised search instead of a call per request.
        uniforms = torch.empty(len(row_req), dtype=torch.float64)
        by_req: dict[int, list[int]] = {}
        for b, ri in enumerate(row_req):
            by_req.setdefault(ri, []).append(b)
        for ri, rows in by_req.items():
            uniforms[torch.tensor(rows)] = torch.rand(len(rows), generator=gens[ri], dtype=torch.float64)
        cdf = probs.double().cumsum(-1)
        targets = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
        drawn = torch.searchsorted(cdf, targets, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)
        return drawn.tolist()


class _RetainedStore:
    """Sampled sequences kept for reuse: KV of tokens[:-1] and the hidden state before each completion token.

    Bounded by bytes; the oldest entries go first. Lookups are linear over entries (a few dozen per
    question), each a C-level tuple comparison.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: "OrderedDict[tuple[int, ...], tuple[int, list, torch.Tensor | None, int]]" = OrderedDict()
        self._bytes = 0

    def add(self, tokens: tuple[int, ...], prefix_len: int, kv: list, hidden: torch.Tensor | None) -> None:
        size = sum(k.numel() * k.element_size() * 2 for k, _ in kv) + (hidden.numel() * hidden.element_size() if hidden is not None else 0)
        if size > self.max_bytes or tokens in self._entries:
            return
        self._entries[tokens] = (prefix_len, kv, hidden, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, _, _, old) = self._entries.popitem(last=False)
            self._bytes -= old

    def lookup(self, prefix: tuple[int, ...]):
        """(kv slices, hidden state predicting the next token) for ``prefix``, if a kept sequence covers it."""
        n = len(prefix)
        for tokens, (prefix_len, kv, hidden, _) in reversed(self._entries.items()):
            # Needs KV for all n positions (kv covers len(tokens) - 1) and the hidden after position n - 1.
            if n < prefix_len or n > len(tokens) - 1 or hidden is None or tokens[:n] != prefix:
                continue
            return [(k[:, :n, :], v[:, :n, :]) for k, v in kv], hidden[n - prefix_len]
        return None

    def hidden_for(self, context: Sequence[int], completion: Sequence[int]) -> torch.Tensor | None:
        entry = self._entries.get(tuple(context) + tuple(completion))
        if entry is None or entry[0] != len(context) or entry[2] is None:
            return None
        return entry[2]

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


def _select_cache(cache, select: torch.Tensor) -> None:
    """Gather cache rows in place (rows may repeat when a physical row splits)."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, select)
        layer.values = layer.values.index_select(0, select)


def _tensor_digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()
