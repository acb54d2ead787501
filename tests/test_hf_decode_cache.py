"""The decoding loop's cache and sampler against independent computations.

- ``place_rows`` / ``move_rows`` against a plain gather of every row (random trees of splits and ends);
- ``inverse_cdf`` (two-level search) against one float64 cumulative sum over the whole vocabulary (equal up to
  float32 rounding of block masses);
- ``shared_prefix_attention`` (the shared prefix attended once, merged by log-sum-exp) against SDPA over
  each row's whole KV;
- a whole decode with many splits and finishing rows: every retained hidden state equals a fresh,
  uncached forward of that sequence (so each step's KV was in the right slot), and so does a second
  decode that continues from kept sequences (so the kept KV, shared prefix included, is right).
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from gradalign_engine.backends import BranchRequest
from gradalign_engine.backends.hf import HFBackend
from gradalign_engine.backends.hf_attention import shared_prefix_attention
from gradalign_engine.backends.hf_cache import SlabLayer, move_rows, place_rows
from gradalign_engine.backends.hf_decode import CDF_BLOCK, inverse_cdf, shared_length
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


def test_shared_length_is_the_longest_common_prefix():
    rng = random.Random(6)
    for _ in range(200):
        stem = tuple(rng.randrange(3) for _ in range(rng.randrange(6)))
        prefixes = [stem + tuple(rng.randrange(3) for _ in range(rng.randrange(4))) for _ in range(rng.randrange(1, 5))]
        brute = max(n for n in range(min(map(len, prefixes)) + 1) if len({p[:n] for p in prefixes}) == 1)
        assert shared_length(prefixes) == brute, prefixes


@pytest.mark.parametrize("groups", [1, 3])
def test_shared_prefix_attention_equals_attention_over_each_rows_whole_kv(groups):
    torch.manual_seed(5)
    rows, kv_heads, dim, shared, own = 7, 2, 16, 9, 5
    query = torch.randn(rows, kv_heads * groups, 1, dim)
    shared_kv = (torch.randn(kv_heads, shared, dim), torch.randn(kv_heads, shared, dim))
    keys, values = torch.randn(rows, kv_heads, own, dim), torch.randn(rows, kv_heads, own, dim)
    visible = torch.ones(rows, 1, 1, own, dtype=torch.bool)
    for row in range(rows):
        visible[row, ..., : row % own] = False  # left padding of the rows' own columns
    module = SimpleNamespace(layer_idx=0, num_key_value_groups=groups, is_causal=True)
    got, _ = shared_prefix_attention(module, query, keys, values, visible, scaling=0.3, shared_prefix=[shared_kv])
    whole_k = torch.cat([shared_kv[0].expand(rows, -1, -1, -1), keys], 2).repeat_interleave(groups, 1)
    whole_v = torch.cat([shared_kv[1].expand(rows, -1, -1, -1), values], 2).repeat_interleave(groups, 1)
    mask = torch.cat([torch.ones(rows, 1, 1, shared, dtype=torch.bool), visible], -1)
    expect = F.scaled_dot_product_attention(query, whole_k, whole_v, attn_mask=mask, scale=0.3).transpose(1, 2)
    assert got.shape == expect.shape
    assert torch.allclose(got, expect, atol=1e-6), float((got - expect).abs().max())


def _assert_kept_hiddens_equal_fresh_forwards(backend, sequences) -> int:
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
    return checked


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
    assert backend._shared_prefix_attention  # the decode attended to the shared prefix once
    assert _assert_kept_hiddens_equal_fresh_forwards(backend, sequences) >= 6
    # Continue from kept sequences: their prefixes' KV now comes from the store, not from a prefill.
    continued = [
        BranchRequest(prefix=tuple(context) + tuple(completion[:3]), n=2, max_new_tokens=10, seed=seed + 1)
        for context, completion in sequences[:4]
        if len(completion) > 4
    ]
    assert continued
    out = backend.generate(continued, temperature=1.5, retain=True)
    again = [(req.prefix, s) for req, samples in zip(continued, out) for s in samples]
    assert _assert_kept_hiddens_equal_fresh_forwards(backend, again) >= 2
