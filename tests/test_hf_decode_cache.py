"""The decoding loop's cache and sampler against independent computations.

- ``place_rows`` / ``move_rows`` against a plain gather of every row (random trees of splits and ends);
- ``inverse_cdf`` (two-level search) against one float64 cumulative sum over the whole vocabulary (equal up to
  float32 rounding of block masses);
- a whole decode with many splits and finishing rows: every retained hidden state equals a fresh,
  uncached forward of that sequence (so each step's KV was in the right slot).
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import DynamicCache

from gradalign_engine.backends import BranchRequest
from gradalign_engine.backends.hf import HFBackend
from gradalign_engine.backends.hf_cache import SlabLayer, move_rows, place_rows
from gradalign_engine.backends.hf_decode import CDF_BLOCK, inverse_cdf
from gradalign_engine.config import ModelSpec


def _random_parents(rng: random.Random, old: int) -> list[int]:
    """Each old row ends (0 children), continues (1) or splits (2-3), in a shuffled order."""
    parents = [p for p in range(old) for _ in range(rng.choice([0, 1, 1, 2, 3]))]
    rng.shuffle(parents)
    return parents or [0]


def test_place_rows_is_a_permutation_that_keeps_surviving_rows_in_place():
    rng = random.Random(0)
    for _ in range(500):
        parents = _random_parents(rng, rng.randint(1, 12))
        slots = place_rows(parents)
        assert sorted(slots) == list(range(len(parents)))
        for parent in set(parents):
            if parent < len(parents):
                assert any(slots[j] == parent for j, p in enumerate(parents) if p == parent), (parents, slots)


def test_slab_moves_and_appends_equal_a_full_gather_and_concatenation():
    rng = random.Random(1)
    torch.manual_seed(1)
    keys = torch.randn(5, 2, 7, 4)
    reference = DynamicCache(ddp_cache_data=[(keys.clone(), keys.clone() + 1)])
    slab = DynamicCache(ddp_cache_data=[(keys.clone(), keys.clone() + 1)])
    slab.layers[0] = SlabLayer.of(keys, keys + 1)  # no stated capacity: it grows
    for step in range(60):  # past SPARE_COLUMNS, so the columns grow too
        rows = reference.layers[0].keys.shape[0]
        parents = _random_parents(rng, rows)[:40]
        slots = place_rows(parents)
        by_slot = [0] * len(parents)
        for j, s in enumerate(slots):
            by_slot[s] = parents[j]
        ref = reference.layers[0]
        gather = torch.tensor(by_slot)
        ref.keys, ref.values = ref.keys.index_select(0, gather), ref.values.index_select(0, gather)
        move_rows(slab, by_slot, torch.device("cpu"))
        new = torch.randn(len(by_slot), 2, 1, 4)
        expect = ref.update(new, new * 2)
        got = slab.layers[0].update(new, new * 2)
        assert torch.equal(got[0], expect[0]) and torch.equal(got[1], expect[1]), step


def test_left_padded_slab_holds_each_prefix_right_aligned_and_stays_within_its_capacity():
    torch.manual_seed(4)
    kv = [(torch.randn(2, n, 4), torch.randn(2, n, 4)) for n in (3, 6, 1)]
    layer = SlabLayer.left_padded(kv, 6, row_capacity=5, column_capacity=9)
    for row, (keys, values) in enumerate(kv):
        pad = 6 - keys.shape[1]
        assert torch.equal(layer.keys[row, :, pad:], keys) and torch.equal(layer.values[row, :, pad:], values)
        assert not layer.keys[row, :, :pad].any() and not layer.values[row, :, :pad].any()
    buffer = layer._kbuf
    move_rows(_cache_of(layer), [0, 1, 2, 1, 0], torch.device("cpu"))  # two splits: 5 rows, the capacity
    for _ in range(3):  # 6 + 3 columns: the capacity
        layer.update(torch.ones(5, 2, 1, 4), torch.ones(5, 2, 1, 4))
    assert layer._kbuf is buffer  # no reallocation
    assert torch.equal(layer.keys[3, :, :6], kv[1][0])  # row 3 copies row 1 (6 tokens, no padding)
    layer.update(torch.ones(5, 2, 1, 4), torch.ones(5, 2, 1, 4))
    assert layer._kbuf is not buffer and layer.keys.shape == (5, 2, 10, 4)  # past it: grown, content kept
    assert torch.equal(layer.keys[4, :, 3:6], kv[0][0])


def _cache_of(layer):
    cache = DynamicCache()
    cache.layers = [layer]
    return cache


def test_two_level_inverse_cdf_equals_one_cumulative_sum():
    """Each draw is the float64 one-sum draw, or a neighbour across a boundary within float32 rounding of it."""
    torch.manual_seed(2)
    for vocab in (3, CDF_BLOCK - 1, CDF_BLOCK, 1000, 49152, 151936):
        logits = torch.randn(512, vocab) * 3
        logits[:, torch.randperm(vocab)[: vocab // 3]] = float("-inf")  # zero-mass tokens, as top-k leaves
        probs = torch.softmax(logits, -1)
        uniforms = torch.rand(512, dtype=torch.float64)
        cdf = probs.double().cumsum(-1)
        targets = uniforms * cdf[:, -1]
        reference = torch.searchsorted(cdf, targets[:, None], right=True).squeeze(-1)
        drawn = inverse_cdf(probs, uniforms)
        below = torch.where(drawn > 0, cdf.gather(1, (drawn - 1).clamp(min=0)[:, None]).squeeze(-1), 0.0)
        above = cdf.gather(1, drawn[:, None]).squeeze(-1)
        # Block masses are float32 sums: a boundary may move by ~1e-6 of a block's mass (<< 1e-7 of the total).
        miss = torch.maximum(below - targets, targets - above).clamp(min=0)
        assert float(miss.max()) <= 1e-7, vocab
        assert int((drawn != reference).sum()) <= 2, vocab
        assert bool((probs.gather(1, drawn[:, None]) > 0).all())


def test_inverse_cdf_never_draws_a_zero_mass_token_at_block_edges():
    probs = torch.zeros(4, 2 * CDF_BLOCK)
    probs[:, 3] = 0.5
    probs[:, CDF_BLOCK + 5] = 0.5
    uniforms = torch.tensor([0.0, 0.4999999999, 0.5, 0.9999999999], dtype=torch.float64)
    assert inverse_cdf(probs, uniforms).tolist() == [3, 3, CDF_BLOCK + 5, CDF_BLOCK + 5]


@pytest.mark.parametrize("seed", [0, 1])
def test_every_retained_hidden_state_equals_a_fresh_forward(tiny_model_dir, seed):
    backend = HFBackend(ModelSpec(model=str(tiny_model_dir), device="cpu"))
    prefix = tuple(backend.tokenizer("<|user|> what is 1 + 2 ? <|end|> <|assistant|>")["input_ids"])
    requests = [
        BranchRequest(prefix=prefix, n=12, max_new_tokens=40, seed=seed),
        BranchRequest(prefix=prefix[:-2], forced=(10, 11, 12), n=3, max_new_tokens=25, seed=seed + 7),
    ]
    out = backend.generate(requests, temperature=1.5, retain=True)
    # A forced branch's samples follow its forced token (n samples per forced token, in order).
    sequences = [(requests[0].prefix, s) for s in out[0]]
    sequences += [(requests[1].prefix + (requests[1].forced[i // 3],), s) for i, s in enumerate(out[1])]
    assert len({tuple(s) for _, s in sequences}) > 6  # rows split, and finish at different steps
    assert len({len(s) for _, s in sequences}) > 2
    checked = 0
    for context, completion in sequences:
        kept = backend._retained.hidden_for(context, completion)
        if kept is None:  # two rows sampled the same sequence: kept once
            continue
        ids = torch.tensor([list(context) + list(completion)])
        with torch.inference_mode():
            fresh = backend._decoder(input_ids=ids).last_hidden_state[0]
        n = len(completion)
        assert torch.allclose(kept, fresh[len(context) - 1 : len(context) - 1 + n], atol=1e-5), (context, completion)
        checked += 1
    assert checked >= 6
