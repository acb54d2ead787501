"""The decoding loop's cache and sampler against independent computations.

- ``place_rows`` / ``move_rows`` against a plain gather of every row (random trees of splits and ends);
- ``inverse_cdf`` (two-level search) against one float64 cumulative sum over the whole vocabulary;
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
from gradalign_engine.backends.hf_cache import SlabLayer, as_slabs, move_rows, place_rows
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
    as_slabs(slab)
    assert isinstance(slab.layers[0], SlabLayer)
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


def test_two_level_inverse_cdf_equals_one_cumulative_sum():
    torch.manual_seed(2)
    for vocab in (3, CDF_BLOCK - 1, CDF_BLOCK, 1000, 49152):
        logits = torch.randn(64, vocab) * 3
        logits[:, torch.randperm(vocab)[: vocab // 3]] = float("-inf")  # zero-mass tokens, as top-k leaves
        probs = torch.softmax(logits, -1)
        uniforms = torch.rand(64, dtype=torch.float64)
        cdf = probs.double().cumsum(-1)
        reference = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True).squeeze(-1)
        drawn = inverse_cdf(probs, uniforms)
        assert torch.equal(drawn, reference), vocab
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
