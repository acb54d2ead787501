"""Adaptive allocation (step 6) on the tiny random-weight model: it spends exactly its budget, only on
candidates of analysed nodes (including children seen in passing), spreads it without target
teachers, and never changes the base rollouts."""

from __future__ import annotations

import pytest
from engine_helpers import Q, tiny_config

from gradalign_engine.adaptive import spend_adaptive_budget
from gradalign_engine.config import RolloutConfig
from gradalign_engine.pipeline import Engine
from gradalign_engine.tree import Continuation


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(tiny_config(tiny_model_dir))


def test_base_rollouts_depend_only_on_what_shapes_them(engine):
    def base(seed: int = 5, **kw):
        return [
            r.tokens for r in engine.build_tree(Q, rollouts=RolloutConfig(num_rollouts=4, **kw), seed=seed).rollouts
        ]

    reference = base(continuations=2)
    # Continuation settings change the tree (its id) but not its base rollouts: settings compare on the same rollouts.
    assert engine.tree_id(Q, rollouts=RolloutConfig(num_rollouts=4, continuations=2), seed=5) != engine.tree_id(
        Q, rollouts=RolloutConfig(num_rollouts=4, continuations=3), seed=5
    )
    assert base(continuations=3, nodes_per_path=1) == reference
    assert base(continuations=2, adaptive_continuations=8, adaptive_batch=2) == reference
    assert base(seed=6, continuations=2) != reference


def test_adaptive_allocation_spends_exactly_its_budget(engine):
    adaptive = engine.build_tree(
        Q, rollouts=RolloutConfig(num_rollouts=4, continuations=2, adaptive_continuations=40, adaptive_batch=4)
    )
    assert sum(c.adaptive for c in adaptive.continuations) == 40
    # Step 5 is the same as without step 6 (same nodes, same candidates, M each).
    plain = engine.build_tree(Q, rollouts=RolloutConfig(num_rollouts=4, continuations=2))
    fixed = sum(len(n.candidates) * 2 for n in plain.nodes if n.skip_reason is None)
    assert sum(not c.adaptive for c in adaptive.continuations) == fixed
    # Adaptive continuations go only to candidates of analysed nodes (a child of S(u) that step 6
    # forced joins its node's candidates).
    allowed = {(n.rollout_index, n.depth, c) for n in adaptive.nodes if n.skip_reason is None for c in n.candidates}
    assert all((c.rollout_index, c.depth, c.forced) in allowed for c in adaptive.continuations if c.adaptive)


def test_adaptive_allocation_plans_children_seen_in_passing(engine):
    # A child of S(u) that no node forced, reached only by sequences passing through, enters the
    # scored g* with its few incidental visits: step 6 must be able to spend on it, and then records it
    # among the node's forced candidates.
    rcfg = RolloutConfig(num_rollouts=4, continuations=2)
    scfg, seed, targets = engine.config.sampling, engine.config.seed, engine.models.targets(None)
    tree = engine.build_tree(Q, rollouts=rcfg)
    node_rows: dict = {}
    nodes = engine.builder.choose_nodes(tree, rcfg, scfg, seed, targets, None, node_rows)
    node = next(n for n in nodes if 1 <= n.depth <= scfg.max_new_tokens - 3)
    base = tree.rollouts[node.rollout_index]
    row = node_rows[(None, node.rollout_index, node.depth)]
    eos = set(engine.student.eos_token_ids)
    passing = max(
        (t for t in range(row.shape[0]) if t not in node.candidates and t not in eos), key=lambda t: float(row[t])
    )
    # Forced one step earlier, then sampled through ``passing``: counted toward it, not forced there.
    for ok in (False, True):
        tree.continuations.append(
            Continuation(node.rollout_index, node.depth - 1, base.tokens[node.depth - 1], [passing], ok)
        )
    assert {c.token_id: c.visits for c in tree.counter().children(base.tokens[: node.depth])}[passing] == 2
    run = lambda work: engine.builder.continue_nodes(tree, work, scfg, seed, None, adaptive=True)  # noqa: E731
    spend_adaptive_budget(
        tree,
        [node],
        RolloutConfig(num_rollouts=4, continuations=2, adaptive_continuations=200, adaptive_batch=4),
        scfg,
        targets,
        node_rows,
        engine.config.analysis,
        eos,
        run,
    )
    extra = [c for c in tree.continuations if c.adaptive]
    assert sum(1 for _ in extra) == 200
    assert any(c.forced == passing and c.depth == node.depth for c in extra)
    assert passing in node.candidates


def test_adaptive_allocation_without_target_teachers_spreads_its_budget(engine):
    # No teacher to aim at: the extra budget is spread over the open children, least visited first.
    tree = engine.build_tree(
        Q,
        rollouts=RolloutConfig(num_rollouts=4, continuations=2, adaptive_continuations=24, adaptive_batch=4),
        target_teachers=[],
    )
    extra = [c for c in tree.continuations if c.adaptive]
    assert len(extra) == 24
    assert len({(c.rollout_index, c.depth, c.forced) for c in extra}) >= 2
