"""The decoding loop's KV cache: slabs with spare rows and columns, so that a step copies only what changed.

transformers' DynamicLayer appends a step's keys by concatenation (the whole cache copied every
step) and reorders rows by gathering all of them. In a tree most steps change a few rows: some split
(a branch samples two tokens), some finish. :class:`SlabLayer` keeps each layer's keys and values in
a buffer with spare columns (a step writes one column) and spare rows, and :func:`place_rows` lays
the next step's rows out so that every surviving row keeps its slot; only split or moved rows are
copied. Physical row order carries no meaning in the decoder (each logical row names its physical
row), so the layout is free.

Knows tensors and transformers' cache layers; nothing of requests, trees or sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import DynamicLayer

__all__ = ["SlabLayer", "place_rows", "move_rows", "SPARE_COLUMNS"]

# Spare columns added whenever a slab fills: one growth (a copy of the cache) per this many steps.
SPARE_COLUMNS = 32


class SlabLayer(DynamicLayer):
    """One layer's KV in [row capacity, heads, column capacity, dim] buffers.

    ``keys`` and ``values`` are views of the used rows and columns, as DynamicLayer's tensors are.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, spare_columns: int = SPARE_COLUMNS):
        super().__init__()
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._spare = spare_columns
        self._rows, _, self._columns, _ = keys.shape
        self._kbuf, self._vbuf = self._allocate(keys, self._rows, self._columns + spare_columns)
        self._kbuf[: self._rows, :, : self._columns] = keys
        self._vbuf[: self._rows, :, : self._columns] = values
        self._expose()

    @staticmethod
    def _allocate(like: torch.Tensor, rows: int, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (rows, like.shape[1], columns, like.shape[3])
        return like.new_zeros(shape), like.new_zeros(shape)

    def _expose(self) -> None:
        self.keys = self._kbuf[: self._rows, :, : self._columns]
        self.values = self._vbuf[: self._rows, :, : self._columns]

    def _grow(self, rows: int, columns: int) -> None:
        """Reallocate to hold at least ``rows`` x ``columns`` (with spare room), keeping the used part."""
        cap_rows, cap_columns = self._kbuf.shape[0], self._kbuf.shape[2]
        if rows <= cap_rows and columns <= cap_columns:
            return
        new_rows = max(rows, cap_rows) if rows <= cap_rows else max(rows, cap_rows + cap_rows // 2)
        new_columns = cap_columns if columns <= cap_columns else columns + self._spare
        kbuf, vbuf = self._allocate(self._kbuf, new_rows, new_columns)
        kbuf[: self._rows, :, : self._columns] = self.keys
        vbuf[: self._rows, :, : self._columns] = self.values
        self._kbuf, self._vbuf = kbuf, vbuf

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[-2]
        self._grow(self._rows, self._columns + n)
        self._kbuf[: self._rows, :, self._columns : self._columns + n] = key_states
        self._vbuf[: self._rows, :, self._columns : self._columns + n] = value_states
        self._columns += n
        self._expose()
        return self.keys, self.values

    def move_rows(self, rows: int, targets: torch.Tensor, sources: torch.Tensor) -> None:
        """Resize to ``rows`` rows, row ``targets[i]`` taking a copy of old row ``sources[i]``."""
        self._grow(rows, self._columns)
        if len(targets):
            used = slice(0, self._columns)
            moved_k = self._kbuf[:, :, used].index_select(0, sources)
            moved_v = self._vbuf[:, :, used].index_select(0, sources)
            self._kbuf[:, :, used].index_copy_(0, targets, moved_k)
            self._vbuf[:, :, used].index_copy_(0, targets, moved_v)
        self._rows = rows
        self._expose()


def place_rows(parents: Sequence[int]) -> list[int]:
    """A slot for each new row (``parents[j]``: the old row new row j continues), keeping rows in place.

    The first new row of each old row still inside the new row count keeps that old row's slot;
    the others (a split's extra rows, rows whose slot is past the end) fill the free slots in order.
    """
    count = len(parents)
    slot: list[int | None] = [None] * count
    taken = [False] * count
    for j, parent in enumerate(parents):
        if parent < count and not taken[parent]:
            slot[j], taken[parent] = parent, True
    free = (i for i in range(count) if not taken[i])
    return [s if s is not None else next(free) for s in slot]


def move_rows(cache, parents_by_slot: Sequence[int], device: torch.device) -> None:
    """Lay ``cache`` out as ``parents_by_slot`` (slot i continues old row ``parents_by_slot[i]``)."""
    moves = [(i, p) for i, p in enumerate(parents_by_slot) if i != p]
    targets = torch.tensor([i for i, _ in moves], dtype=torch.long, device=device)
    sources = torch.tensor([p for _, p in moves], dtype=torch.long, device=device)
    gather = None
    for layer in cache.layers:
        if isinstance(layer, SlabLayer):
            layer.move_rows(len(parents_by_slot), targets, sources)
        else:  # another layer type (a sliding window, say): gather every row
            gather = gather if gather is not None else torch.tensor(list(parents_by_slot), device=device)
            layer.keys = layer.keys.index_select(0, gather)
            layer.values = layer.values.index_select(0, gather)


def as_slabs(cache) -> None:
    """Replace the plain full-attention layers of ``cache`` by slabs (other layer types are kept)."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            cache.layers[i] = SlabLayer(layer.keys, layer.values)
