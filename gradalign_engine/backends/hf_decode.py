"""The HF backend's decoding loop: logical rows over shared physical rows, and the kept sequences.

A chunk of requests is decoded as *logical rows* (request x branch x sample) over *physical rows*
(one cache row and one forward each): rows whose token histories are identical share a physical row,
which splits only when its rows sample different tokens. Every distinct prefix is therefore forwarded
once, whatever the number of branches and samples through it. Each request samples from its own
seeded generator (inverse-CDF with one uniform per row), so results do not depend on batching.

Kept sequences (:class:`RetainedStore`): a sampled sequence's KV cache and final hidden states, so
that continuing from any of its prefixes skips the prefill and scoring it needs only the output head.

Knows tensors and a transformers DynamicCache; knows nothing of trees or teachers.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .base import BranchRequest, CancelToken
from .hf_cache import move_rows, place_rows, slab_cache

__all__ = ["RetainedStore", "ChunkDecoder", "sample_rows", "inverse_cdf"]


class RetainedStore:
    """Sampled sequences kept for reuse: KV of tokens[:-1] and the hidden state before each completion token.

    Bounded by bytes; the oldest entries go first. Lookups are linear over entries (a few dozen per
    question), each a C-level tuple comparison.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], tuple[int, list, torch.Tensor | None, int]] = OrderedDict()
        self._bytes = 0

    def add(self, tokens: tuple[int, ...], prefix_len: int, kv: list, hidden: torch.Tensor | None) -> None:
        size = sum(k.numel() * k.element_size() * 2 for k, _ in kv)
        size += hidden.numel() * hidden.element_size() if hidden is not None else 0
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


def sample_rows(
    logits: torch.Tensor,
    phys: list[int],
    row_req: list[int],
    gens: list[torch.Generator],
    temperature: float,
    top_p: float,
    top_k: int,
) -> list[int]:
    """One token per logical row, each drawn from its request's generator (batching-independent)."""
    logits = logits.index_select(0, torch.tensor(phys, device=logits.device))
    if temperature == 0:
        return logits.argmax(-1).tolist()
    if temperature != 1.0:  # a copy of rows x vocabulary: skipped at the default temperature
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
    return inverse_cdf(probs, uniforms.to(probs.device)).tolist()


# The vocabulary is searched in blocks of this many tokens: block masses first, then one block's CDF.
CDF_BLOCK = 256


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Per row, the first token whose CDF exceeds ``uniform x total mass`` (zero-mass tokens never).

    Two levels instead of one float64 cumulative sum over the whole vocabulary (rows x 49k float64
    adds per step, the costliest part of sampling): block masses, summed in the probabilities' own
    dtype and accumulated across blocks in float64, pick the block; one block's float64 cumulative sum
    picks the token. Summing a block of CDF_BLOCK float32 masses in float32 moves each CDF boundary by
    at most about 1e-6 of its block's mass, below the float32 rounding of the probabilities themselves.
    """
    rows, vocab = probs.shape
    pad = (-vocab) % CDF_BLOCK
    blocks = (torch.nn.functional.pad(probs, (0, pad)) if pad else probs).reshape(rows, -1, CDF_BLOCK)
    block_cdf = blocks.sum(-1).double().cumsum(-1)
    targets = uniforms * block_cdf[:, -1]
    block = torch.searchsorted(block_cdf, targets[:, None], right=True).squeeze(-1).clamp(max=block_cdf.shape[1] - 1)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)[:, None]).squeeze(-1), 0.0)
    chosen = blocks[torch.arange(rows, device=probs.device), block]
    within = torch.searchsorted(chosen.double().cumsum(-1), (targets - before)[:, None], right=True).squeeze(-1)
    # Rounding can put the target just past the block's own cumulative sum: take its last token with mass.
    last_with_mass = CDF_BLOCK - 1 - (chosen > 0).flip(-1).int().argmax(-1)
    within = torch.minimum(within, last_with_mass)
    return block * CDF_BLOCK + within


@dataclass
class _Rows:
    """The logical rows of a chunk: which request and branch each serves, and what it has written."""

    request: list[int] = field(default_factory=list)
    forced: list[int | None] = field(default_factory=list)  # the branch's forced first token, if any
    pending: list[int | None] = field(default_factory=list)  # the forced token still to append
    limit: list[int] = field(default_factory=list)
    phys: list[int] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)
    hiddens: list[list[torch.Tensor]] = field(default_factory=list)


# forward(ids, mask, positions, cache) -> (cache, hidden [rows, H], logits [rows, V])
ForwardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, object], tuple]


class ChunkDecoder:
    """Decodes one chunk of requests from their prefixes' states (see the module docstring)."""

    def __init__(
        self, forward: ForwardFn, counters, eos: frozenset[int], device: torch.device, retained: RetainedStore | None
    ):
        self.forward, self.counters, self.eos, self.device, self.retained = forward, counters, eos, device, retained

    def run(
        self,
        requests: Sequence[BranchRequest],
        start: ChunkStart,
        temperature: float,
        top_p: float,
        top_k: int,
        cancel: CancelToken | None,
        finished: Callable[[int], None] | None = None,
    ) -> list[list[list[int]]]:
        """Decode every row of ``requests``; ``finished(n)`` after each step with the rows done so far."""
        rows = self._rows(requests, start.row_of)
        gens = [torch.Generator(device="cpu").manual_seed(int(req.seed) % (2**63)) for req in requests]
        cache, mask, hidden, logits = start.cache, start.mask, start.hidden, start.logits
        next_pos = mask.sum(-1) + start.shared_length
        self._shared = start.shared
        active = [r for r in range(len(rows.request)) if not self._ended_before_sampling(rows, r)]
        while active:
            if cancel is not None:
                cancel.raise_if_cancelled()
            choice = self._step_tokens(rows, active, logits, hidden, gens, temperature, top_p, top_k)
            active = [r for r in active if not self._finished(rows, r, requests, cache, mask)]
            if finished is not None:
                finished(len(rows.request) - len(active))
            if not active:
                break
            parents, step_tokens = self._regroup(rows, active, choice)
            if parents != list(range(mask.shape[0])):
                move_rows(cache, parents, self.device)
                sel = torch.tensor(parents, device=self.device)
                mask, next_pos = mask.index_select(0, sel), next_pos.index_select(0, sel)
            mask = torch.cat([mask, torch.ones((len(parents), 1), dtype=mask.dtype, device=self.device)], dim=1)
            ids = torch.tensor(step_tokens, dtype=torch.long, device=self.device)[:, None]
            cache, hidden, logits = self.forward(ids, mask, next_pos[:, None], cache)
            next_pos = next_pos + 1
        out: list[list[list[int]]] = [[] for _ in requests]
        for r, ri in enumerate(rows.request):
            out[ri].append(rows.tokens[r])
        return out

    @staticmethod
    def _rows(requests: Sequence[BranchRequest], row_of: dict[tuple[int, ...], int]) -> _Rows:
        rows = _Rows()
        for ri, req in enumerate(requests):
            for forced in req.branches:
                for _ in range(req.n):
                    rows.request.append(ri)
                    rows.forced.append(forced)
                    rows.pending.append(forced)
                    rows.limit.append(req.max_new_tokens)
                    rows.phys.append(row_of[tuple(req.prefix)])
                    rows.tokens.append([])
                    rows.hiddens.append([])
        return rows

    def _ended_before_sampling(self, rows: _Rows, r: int) -> bool:
        # A forced end-of-sequence token, or no room left, ends the row before any sampling.
        return rows.limit[r] <= 0 or (rows.pending[r] is not None and rows.pending[r] in self.eos)

    def _step_tokens(
        self, rows: _Rows, active: list[int], logits, hidden, gens, temperature, top_p, top_k
    ) -> dict[int, int]:
        """The next token of every active row: sampled, or the forced token it still owes."""
        free = [r for r in active if rows.pending[r] is None]
        choice: dict[int, int] = {}
        if free:
            sampled = sample_rows(
                logits, [rows.phys[r] for r in free], [rows.request[r] for r in free], gens, temperature, top_p, top_k
            )
            for r, t in zip(free, sampled):
                choice[r] = t
                rows.tokens[r].append(t)
                if self.retained is not None:
                    rows.hiddens[r].append(hidden[rows.phys[r]])
            self.counters.add(generated_tokens=len(free))
        for r in active:
            if rows.pending[r] is not None:
                choice[r], rows.pending[r] = rows.pending[r], None
        return choice

    def _finished(self, rows: _Rows, r: int, requests, cache, mask) -> bool:
        generated = rows.tokens[r]
        if not generated or (len(generated) < rows.limit[r] and generated[-1] not in self.eos):
            return False
        if self.retained is not None:
            # Keep the finished sequence's KV (all but its last token) and its per-token hidden states.
            phys, prefix = rows.phys[r], tuple(requests[rows.request[r]].prefix)
            if rows.forced[r] is not None:  # the sequence runs through the forced token
                prefix += (rows.forced[r],)
            own = slice(mask.shape[1] - int(mask[phys].sum()), None)  # a row's valid columns are its last ones
            kv = [(layer.keys[phys][:, own, :], layer.values[phys][:, own, :]) for layer in cache.layers]
            if self._shared is not None:  # cat copies, as clone would
                kv = [(torch.cat([sk, k], 1), torch.cat([sv, v], 1)) for (sk, sv), (k, v) in zip(self._shared, kv)]
            else:
                kv = [(k.clone(), v.clone()) for k, v in kv]
            hiddens = torch.stack(rows.hiddens[r]) if rows.hiddens[r] else None
            self.retained.add(prefix + tuple(generated), len(prefix), kv, hiddens)
        return True

    @staticmethod
    def _regroup(rows: _Rows, active: list[int], choice: dict[int, int]) -> tuple[list[int], list[int]]:
        """New physical rows, one per distinct (parent row, next token), placed so that most stay put.

        Returns, per new physical row, the old row it continues and the token it forwards next.
        """
        group_of: dict[tuple[int, int], int] = {}
        for r in active:
            group_of.setdefault((rows.phys[r], choice[r]), len(group_of))
        slots = place_rows([parent for parent, _ in group_of])
        parents, step_tokens = [0] * len(slots), [0] * len(slots)
        for (parent, token), group in group_of.items():
            parents[slots[group]], step_tokens[slots[group]] = parent, token
        for r in active:
            rows.phys[r] = slots[group_of[(rows.phys[r], choice[r])]]
        return parents, step_tokens


@dataclass
class ChunkStart:
    """The state decoding starts from: one physical row per distinct prefix."""

    row_of: dict[tuple[int, ...], int]  # prefix -> its physical row
    cache: object  # a DynamicCache over the left-padded prefixes, after their shared first tokens
    mask: torch.Tensor  # [rows, width] attention mask over the cache's columns
    hidden: torch.Tensor  # [rows, H]: the hidden state predicting each row's next token
    logits: torch.Tensor  # [rows, V]
    shared: list | None = None  # per layer, (keys, values) [kv heads, P, dim] of the tokens every prefix starts with
    shared_length: int = 0  # P; the cache holds each row's columns after them


def shared_length(prefixes: list[tuple[int, ...]]) -> int:
    """Length of the longest common prefix of ``prefixes`` (``os.path.commonprefix`` works on any sequences)."""
    return len(os.path.commonprefix(prefixes))


def chunk_start(
    prefixes: list[tuple[int, ...]],
    states: list,
    head,
    model_config,
    device: torch.device,
    row_capacity: int = 0,
    column_capacity: int = 0,
    share_prefix: bool = False,
) -> ChunkStart:
    """The prefixes' KV slices left-padded into one cache (``states``: per prefix, (kv per layer, hidden)).

    ``row_capacity`` and ``column_capacity`` bound the rows and columns decoding will use (logical
    rows; widest prefix + longest decode), so that the slabs never grow. With ``share_prefix`` (the
    model runs shared-prefix attention, :mod:`.hf_attention`, and has only full-attention layers), the
    tokens every prefix starts with are held once, outside the cache.
    """
    shared, length = None, 0
    if share_prefix:
        length = shared_length(prefixes)
    if length:
        shared = [(k[:, :length].contiguous(), v[:, :length].contiguous()) for k, v in states[0][0]]
        states = [([(k[:, length:], v[:, length:]) for k, v in kv], hidden) for kv, hidden in states]
    width = max(len(p) for p in prefixes) - length
    cache = slab_cache([kv for kv, _ in states], width, model_config, row_capacity, max(column_capacity - length, 0))
    mask = torch.zeros((len(prefixes), width), dtype=torch.long, device=device)
    for i, p in enumerate(prefixes):
        mask[i, width - (len(p) - length) :] = 1
    hidden = torch.stack([h for _, h in states])
    logits = head(hidden).float()
    return ChunkStart({p: i for i, p in enumerate(prefixes)}, cache, mask, hidden, logits, shared, length)
