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

__all__ = ["SlabLayer", "place_rows", "move_rows", "slab_cache", "full_attention_only", "SPARE_COLUMNS"]

# Spare columns added whenever a slab without a stated capacity fills: one growth per this many steps.
SPARE_COLUMNS = 32


class SlabLayer(DynamicLayer):
    """One layer's KV in [row capacity, heads, column capacity, dim] buffers.

    ``keys`` and ``values`` are views of the used rows and columns, as DynamicLayer's tensors are.
    The buffers are uninitialised (``torch.empty``): every used row and column is written before it
    is exposed. On the CPU, pages never touched cost no memory; on a GPU the whole capacity is
    allocated at once, and the decoder's capacity stays within the chunk's max_batch_tokens budget.
    """

    def __init__(self, like: torch.Tensor, shape: tuple[int, int, int, int], row_capacity: int, column_capacity: int):
        """Room for ``row_capacity`` x ``column_capacity``; ``shape`` (rows, heads, columns, dim) is in use.

        The caller writes the used part (see :meth:`of` and :meth:`left_padded`).
        """
        super().__init__()
        self.dtype, self.device, self.is_initialized = like.dtype, like.device, True
        self._rows, heads, self._columns, dim = shape
        rows = max(self._rows, row_capacity)
        columns = max(self._columns, column_capacity) if column_capacity else self._columns + SPARE_COLUMNS
        self._kbuf = like.new_empty((rows, heads, columns, dim))
        self._vbuf = like.new_empty((rows, heads, columns, dim))
        self._expose()

    @classmethod
    def of(cls, keys: torch.Tensor, values: torch.Tensor, row_capacity: int = 0, column_capacity: int = 0):
        """A slab holding a copy of ``keys`` and ``values`` ([rows, heads, columns, dim])."""
        layer = cls(keys, tuple(keys.shape), row_capacity, column_capacity)
        layer.keys.copy_(keys)
        layer.values.copy_(values)
        return layer

    @classmethod
    def left_padded(cls, kv: list, width: int, row_capacity: int = 0, column_capacity: int = 0):
        """Row i holds ``kv[i]`` (keys, values [heads, n_i, dim]) in its last n_i of ``width`` columns, zeros before."""
        heads, _, dim = kv[0][0].shape
        layer = cls(kv[0][0], (len(kv), heads, width, dim), row_capacity, column_capacity)
        for row, (keys, values) in enumerate(kv):
            pad = width - keys.shape[1]
            layer.keys[row, :, :pad] = 0  # masked, but must be finite: attention multiplies it by zero
            layer.values[row, :, :pad] = 0
            layer.keys[row, :, pad:] = keys
            layer.values[row, :, pad:] = values
        return layer

    def _expose(self) -> None:
        self.keys = self._kbuf[: self._rows, :, : self._columns]
        self.values = self._vbuf[: self._rows, :, : self._columns]

    def _grow(self, rows: int, columns: int) -> None:
        """Reallocate to hold at least ``rows`` x ``columns`` (with spare room), keeping the used part."""
        capacity_rows, capacity_columns = self._kbuf.shape[0], self._kbuf.shape[2]
        if rows <= capacity_rows and columns <= capacity_columns:
            return
        new_rows = capacity_rows if rows <= capacity_rows else max(rows, capacity_rows * 3 // 2)
        new_columns = capacity_columns if columns <= capacity_columns else columns + SPARE_COLUMNS
        kbuf = self._kbuf.new_empty((new_rows, self._kbuf.shape[1], new_columns, self._kbuf.shape[3]))
        vbuf = torch.empty_like(kbuf)
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
        """Resize to ``rows`` rows, row ``targets[i]`` taking a copy of old row ``sources[i]``.

        Every row at or past the old row count must be a target (:func:`place_rows` ensures it).
        """
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


def slab_cache(kv_per_prefix: list, width: int, model_config, row_capacity: int = 0, column_capacity: int = 0):
    """A DynamicCache over left-padded prefixes (``kv_per_prefix[i][layer]`` = (keys, values) [heads, n_i, dim]).

    Plain full-attention layers become slabs sized for ``row_capacity`` x ``column_capacity``, built
    straight from the prefixes; other layer types (a sliding window, say) get a left-padded copy.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=model_config)
    for index, layer in enumerate(cache.layers):
        kv = [prefix_kv[index] for prefix_kv in kv_per_prefix]
        if type(layer) is DynamicLayer:
            cache.layers[index] = SlabLayer.left_padded(kv, width, row_capacity, column_capacity)
        else:
            padded = SlabLayer.left_padded(kv, width)
            layer.update(padded.keys.clone(), padded.values.clone())
    return cache


def full_attention_only(model_config) -> bool:
    """Whether every layer of a cache for ``model_config`` is plain full attention (no sliding window)."""
    from transformers import DynamicCache

    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model_config).layers)
