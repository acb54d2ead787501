"""build_report on small hand-built record sets: bootstrap units (questions vs rollouts) and rollout
clusters joined by shared nodes, skipped-only and empty groups, empty or inconsistent input, and
mixed nodes that enter "all" but neither side of the comparison."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from aggregate_helpers import ANALYSIS, make_record

from gradalign_engine.aggregate import Report, build_report
from gradalign_engine.config import AnalysisConfig
from gradalign_engine.records import SkipReason


def test_bootstrap_unit_question_resamples_whole_trees() -> None:
    # All nodes in one tree: resampling questions can only redraw that tree, so the CI collapses to the
    # mean; resampling rollouts still varies.
    rng = np.random.default_rng(1)
    records = [
        make_record(
            teacher="t", ideal=[1.0, -1.0], distill=rng.normal(size=2).tolist(), rollout_index=i // 3, depth=i % 3
        )
        for i in range(12)
    ]
    by_question = build_report(records, AnalysisConfig(bootstrap_samples=200, bootstrap_unit="question"))
    by_rollout = build_report(records, AnalysisConfig(bootstrap_samples=200, bootstrap_unit="rollout"))
    q_all = [g for g in by_question.groups if g.split == "all"][0]
    r_all = [g for g in by_rollout.groups if g.split == "all"][0]
    assert q_all.mean_ci_low == pytest.approx(q_all.mean_cosine) == pytest.approx(q_all.mean_ci_high)
    assert r_all.mean_ci_low < r_all.mean_cosine < r_all.mean_ci_high
    assert (q_all.rollouts, q_all.questions) == (4, 1)


def test_skipped_only_groups_empty_splits_and_no_bootstrap() -> None:
    records = [
        make_record(teacher="a", ideal=[0.5, -0.5], distill=[1.0, -1.0], correct=True),
        make_record(teacher="a", ideal=[0.5, -0.5], distill=[-1.0, 1.0], correct=True, rollout_index=1),
        make_record(
            teacher="z", ideal=[0.001, -0.001], distill=[1.0, -1.0], skip_reason=SkipReason.IDEAL_NORM_BELOW_THRESHOLD
        ),
        make_record(teacher="z", ideal=[], distill=[], skip_reason=SkipReason.TOO_FEW_CANDIDATES),
    ]
    report = build_report(records, AnalysisConfig(bootstrap_samples=0))
    by_key = {(g.teacher, g.split): g for g in report.groups}
    assert by_key[("a", "all")].mean_cosine == pytest.approx(0.0, abs=1e-15)
    assert math.isnan(by_key[("a", "all")].mean_ci_low)  # no resamples, no interval
    incorrect = by_key[("a", "incorrect")]
    assert (incorrect.nodes, incorrect.skipped, incorrect.rollouts) == (0, 0, 0)
    assert math.isnan(incorrect.mean_cosine) and math.isnan(incorrect.pooled_cosine)
    z_all = by_key[("z", "all")]
    assert (z_all.nodes, z_all.skipped) == (0, 2)
    assert z_all.skip_reasons == {SkipReason.IDEAL_NORM_BELOW_THRESHOLD: 1, SkipReason.TOO_FEW_CANDIDATES: 1}
    assert math.isnan(z_all.mean_cosine) and math.isnan(z_all.fraction_positive)
    # A teacher with no scored node ranks last, and its nan values travel through JSON as null.
    assert [(e.teacher, e.rank) for e in report.ranking] == [("a", 1), ("z", 2)]
    data = report.to_dict()
    json.dumps(data, allow_nan=False)
    z_dict = next(g for g in data["groups"] if g["teacher"] == "z" and g["split"] == "all")
    assert z_dict["mean_cosine"] is None
    assert math.isnan(Report.from_dict(data).groups[-1].mean_cosine)
    assert all(math.isnan(c.diff) for c in report.comparisons)


def test_empty_input_and_inconsistent_vectors() -> None:
    empty = build_report([], ANALYSIS)
    assert (empty.records, empty.groups, empty.ranking, empty.per_question) == (0, [], [], [])
    broken = make_record(teacher="a", ideal=[0.5, -0.5], distill=[1.0, -1.0])
    broken.distill = [1.0]
    with pytest.raises(ValueError, match="ideal"):
        build_report([broken], ANALYSIS)
    with pytest.raises(ValueError):
        build_report([], ANALYSIS, confidence=1.5)


def test_shared_nodes_join_their_rollouts_into_one_bootstrap_cluster() -> None:
    """A rollout cluster is a connected group of rollouts: relabelling each group as one rollout
    (components found by scipy, independently of the aggregator) must not change any interval;
    treating each shared node as belonging to its first rollout only must."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(5)
    shapes = [[0, 1], [1, 2], [3], [4, 5], [5], [6], [7, 8, 9], [10], [11], [2], [6], [8]]
    records = [
        make_record(
            teacher="t",
            ideal=[1.0, -1.0],
            distill=rng.normal(size=2).tolist(),
            rollout_index=rs[0],
            rollouts=rs,
            depth=k,
        )
        for k, rs in enumerate(shapes * 3)
    ]
    edges = [(rs[0], other) for rs in shapes for other in rs]
    graph = coo_matrix(([1] * len(edges), ([a for a, _ in edges], [b for _, b in edges])), shape=(12, 12))
    _, component = connected_components(graph, directed=False)
    collapsed = [dataclasses.replace(r, rollout_indices=[int(component[r.rollouts[0]])]) for r in records]
    first_only = [dataclasses.replace(r, rollout_indices=[r.rollouts[0]]) for r in records]
    config = AnalysisConfig(bootstrap_samples=400, bootstrap_unit="rollout")

    def interval(recs):
        group = next(g for g in build_report(recs, config, seed=1).groups if g.split == "correct")
        return group.mean_ci_low, group.mean_ci_high

    assert interval(collapsed) == interval(records)
    assert interval(first_only) != interval(records)
    group = next(g for g in build_report(records, config).groups if g.split == "all")
    assert group.rollouts == 12 and group.nodes == len(records)


def test_mixed_nodes_enter_all_but_neither_side_of_the_comparison() -> None:
    records = [
        make_record(teacher="t", ideal=[1.0, -1.0], distill=[1.0, -0.5], correct=True, rollouts=[0]),
        make_record(teacher="t", ideal=[1.0, -1.0], distill=[-1.0, 0.5], correct=False, rollouts=[1], rollout_index=1),
        make_record(teacher="t", ideal=[1.0, -1.0], distill=[0.2, 1.0], correct=None, rollouts=[0, 1]),
    ]
    report = build_report(records, AnalysisConfig(bootstrap_samples=0))
    by_split = {g.split: g for g in report.groups}
    assert (by_split["correct"].nodes, by_split["incorrect"].nodes, by_split["mixed"].nodes, by_split["all"].nodes) == (
        1,
        1,
        1,
        3,
    )
    assert by_split["all"].rollouts == 2
    comparison = report.comparisons[0]
    assert (comparison.nodes_incorrect, comparison.nodes_correct) == (1, 1)
    assert comparison.diff == pytest.approx(records[1].cosine - records[0].cosine)
