"""build_report on synthetic records, each number checked against a hand computation in plain Python."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections import Counter, defaultdict

import numpy as np
import pytest
from scipy import stats as scipy_stats

from gradalign_engine.aggregate import DIAGNOSTIC_NAMES, Report, build_report
from gradalign_engine.config import AnalysisConfig
from gradalign_engine.records import AlignmentRecord, Candidate, Diagnostics, SkipReason


def make_record(
    *,
    teacher: str,
    ideal: list[float],
    distill: list[float],
    method: str = "reverse_kl",
    tree_id: str = "t0",
    rollout_index: int = 0,
    correct: bool | None = True,
    rollouts: list[int] | None = None,
    depth: int = 0,
    path_length: int = 10,
    skip_reason: str | None = None,
    advantage: float | None = 0.0,
    diagnostics: Diagnostics | None = None,
) -> AlignmentRecord:
    """One record whose cosine and norms are computed from its vectors (None cosine when skipped)."""
    ideal_norm = math.sqrt(sum(x * x for x in ideal))
    distill_norm = math.sqrt(sum(x * x for x in distill))
    cosine = None
    if skip_reason is None:
        cosine = sum(a * b for a, b in zip(ideal, distill)) / (ideal_norm * distill_norm)
    candidates = [
        Candidate(
            token_id=j, token_text=f"tok{j}", p=0.1, q=0.1, p_renorm=1 / len(ideal), q_renorm=1 / len(ideal),
            visits=4, successes=j % 4, estimate=(j % 4) / 4, ci_low=0.0, ci_high=1.0,
            sampled=j == 0, forced=j > 0, in_support=True,
        )
        for j in range(len(ideal))
    ]
    return AlignmentRecord(
        question_id=f"q-{tree_id}", tree_id=tree_id, rollout_index=rollout_index, rollout_correct=correct,
        depth=depth, path_length=path_length, normalized_depth=depth / path_length, teacher=teacher,
        method=method, candidates=candidates, ideal=list(ideal), distill=list(distill), cosine=cosine,
        skip_reason=skip_reason, ideal_norm=ideal_norm, distill_norm=distill_norm,
        teacher_advantage=advantage, diagnostics=diagnostics, sampled_token_id=0,
        rollout_indices=list(rollouts or []),
    )


def synthetic_records(seed: int = 0) -> list[AlignmentRecord]:
    """Teacher 'good' roughly follows g*, 'bad' roughly opposes it; 'good' also has a jsd method.

    3 trees x 4 rollouts x 5 nodes on one rollout each (depths 2-6); every 7th node is skipped;
    incorrect rollouts get extra alignment. Distinct nodes shared by several rollouts come on top (from
    a second random stream, so the per-rollout nodes are drawn as before): in each tree the root
    (depth 0) lies on all 4 rollouts (mixed); in tree 0, depth 1 is one node on the two correct
    rollouts (0, 2) and one on the two incorrect ones (1, 3).
    """
    rng = np.random.default_rng(seed)
    records = []

    def add(tree: int, rollouts: list[int], outcome: bool | None, depth: int, skip_index: int, gen) -> None:
        size = int(gen.integers(2, 5))
        ideal = gen.normal(size=size)
        ideal -= ideal.mean()
        diag = Diagnostics(*gen.uniform(0.01, 2.0, size=7).tolist())
        for teacher, method, sign in (("good", "reverse_kl", 1.0), ("bad", "reverse_kl", -1.0), ("good", "jsd", 0.5)):
            boost = 0.8 if outcome is False else 0.4 if outcome is None else 0.0
            distill = (sign + boost) * ideal + gen.normal(scale=0.7, size=size)
            skip = None
            if skip_index % 7 == 3:
                skip = SkipReason.IDEAL_NORM_BELOW_THRESHOLD if depth % 2 else SkipReason.TOO_FEW_CANDIDATES
            records.append(
                make_record(
                    teacher=teacher, method=method, ideal=ideal.tolist(), distill=distill.tolist(),
                    tree_id=f"t{tree}", rollout_index=rollouts[0], correct=outcome, rollouts=rollouts, depth=depth,
                    skip_reason=skip, advantage=float(gen.normal()) if depth != 6 else None,
                    diagnostics=diag if depth != 3 else None,
                )
            )

    for tree in range(3):
        for rollout in range(4):
            for depth in range(5):
                add(tree, [rollout], rollout % 2 == 0, depth + 2, tree * 20 + rollout * 5 + depth, rng)
    shared_rng = np.random.default_rng(seed + 1000)
    for tree in range(3):
        add(tree, [0, 1, 2, 3], None, 0, 3 * (tree == 1), shared_rng)  # one mixed root skipped
    add(0, [0, 2], True, 1, 0, shared_rng)
    add(0, [1, 3], False, 1, 0, shared_rng)
    return records


def _selected(records: list[AlignmentRecord], teacher: str, method: str, split: str) -> list[AlignmentRecord]:
    return [
        r for r in records
        if r.teacher == teacher and r.method == method
        and (split == "all" or r.outcome == split)
    ]


ANALYSIS = AnalysisConfig(bootstrap_samples=300, bootstrap_unit="rollout")


@pytest.fixture(scope="module")
def records() -> list[AlignmentRecord]:
    return synthetic_records()


@pytest.fixture(scope="module")
def report(records: list[AlignmentRecord]) -> Report:
    return build_report(records, ANALYSIS, seed=3)


def test_group_counts_and_order(report: Report) -> None:
    keys = [(g.teacher, g.method, g.split) for g in report.groups]
    assert keys == [
        ("bad", "reverse_kl", "correct"), ("bad", "reverse_kl", "incorrect"), ("bad", "reverse_kl", "mixed"), ("bad", "reverse_kl", "all"),
        ("good", "reverse_kl", "correct"), ("good", "reverse_kl", "incorrect"), ("good", "reverse_kl", "mixed"), ("good", "reverse_kl", "all"),
        ("good", "jsd", "correct"), ("good", "jsd", "incorrect"), ("good", "jsd", "mixed"), ("good", "jsd", "all"),
    ]
    assert report.records == (3 * 4 * 5 + 3 + 2) * 3
    assert (report.seed, report.bootstrap_unit, report.bootstrap_samples) == (3, "rollout", 300)


def test_group_statistics_match_hand_computation(records: list[AlignmentRecord], report: Report) -> None:
    for group in report.groups:
        chosen = _selected(records, group.teacher, group.method, group.split)
        scored = [r for r in chosen if r.cosine is not None]
        skipped = [r for r in chosen if r.cosine is None]
        assert group.nodes == len(scored)
        assert group.skipped == len(skipped)
        assert group.split == "mixed" or group.skipped > 0
        assert group.rollouts == len({(r.tree_id, i) for r in scored for i in r.rollouts})
        assert group.questions == len({r.tree_id for r in scored})
        cosines = [r.cosine for r in scored]
        assert group.mean_cosine == pytest.approx(sum(cosines) / len(cosines), rel=1e-12)
        weighted = sum(r.ideal_norm * r.cosine for r in scored) / sum(r.ideal_norm for r in scored)
        assert group.weighted_cosine == pytest.approx(weighted, rel=1e-12)
        all_ideal = [x for r in scored for x in r.ideal]
        all_distill = [x for r in scored for x in r.distill]
        pooled = float(np.dot(all_ideal, all_distill) / (np.linalg.norm(all_ideal) * np.linalg.norm(all_distill)))
        assert group.pooled_cosine == pytest.approx(pooled, rel=1e-12)
        assert group.fraction_positive == pytest.approx(sum(c > 0 for c in cosines) / len(cosines))
        advantages = [r.teacher_advantage for r in scored if r.teacher_advantage is not None]
        assert group.mean_teacher_advantage == pytest.approx(sum(advantages) / len(advantages), rel=1e-12)
        assert group.skip_reasons == dict(Counter(r.skip_reason for r in skipped))
        assert group.mean_ci_low < group.mean_cosine < group.mean_ci_high


def test_good_teacher_outranks_bad_and_incorrect_beats_correct(report: Report) -> None:
    ranking = [(e.method, e.rank, e.teacher) for e in report.ranking]
    assert ranking == [("reverse_kl", 1, "good"), ("reverse_kl", 2, "bad"), ("jsd", 1, "good")]
    by_key = {(g.teacher, g.method, g.split): g for g in report.groups}
    first = report.ranking[0]
    assert first.mean_cosine == by_key[("good", "reverse_kl", "all")].mean_cosine
    assert first.nodes == by_key[("good", "reverse_kl", "all")].nodes
    assert by_key[("good", "reverse_kl", "all")].mean_cosine > 0.3 > -0.3 > by_key[("bad", "reverse_kl", "all")].mean_cosine


def test_comparisons_match_hand_computation(records: list[AlignmentRecord], report: Report) -> None:
    assert [(c.teacher, c.method) for c in report.comparisons] == [("bad", "reverse_kl"), ("good", "reverse_kl"), ("good", "jsd")]
    for comparison in report.comparisons:
        incorrect = [r.cosine for r in _selected(records, comparison.teacher, comparison.method, "incorrect") if r.cosine is not None]
        correct = [r.cosine for r in _selected(records, comparison.teacher, comparison.method, "correct") if r.cosine is not None]
        assert (comparison.nodes_incorrect, comparison.nodes_correct) == (len(incorrect), len(correct))
        assert comparison.mean_incorrect == pytest.approx(np.mean(incorrect), rel=1e-12)
        assert comparison.mean_correct == pytest.approx(np.mean(correct), rel=1e-12)
        assert comparison.diff == pytest.approx(np.mean(incorrect) - np.mean(correct), rel=1e-12)
        reference = scipy_stats.mannwhitneyu(incorrect, correct, alternative="greater")
        assert comparison.mann_whitney_u == pytest.approx(reference.statistic)
        assert comparison.mann_whitney_p == pytest.approx(reference.pvalue, rel=1e-12)
        assert comparison.diff_ci_low < comparison.diff < comparison.diff_ci_high
        assert 0.0 < comparison.bootstrap_p <= 1.0
    # The jsd rows mix 0.5 g* on correct rollouts and 1.3 g* on incorrect ones (same noise): a clear shift.
    shifted = report.comparisons[2]
    assert shifted.diff > 0.2 and shifted.bootstrap_p < 0.05 and shifted.mann_whitney_p < 0.01


def test_correlations_match_scipy(records: list[AlignmentRecord], report: Report) -> None:
    assert len(report.correlations) == 3 * len(DIAGNOSTIC_NAMES)
    for corr in report.correlations:
        scored = [r for r in _selected(records, corr.teacher, corr.method, "all") if r.cosine is not None]
        if corr.diagnostic == "normalized_depth":
            pairs = [(r.cosine, r.normalized_depth) for r in scored]
        else:
            pairs = [(r.cosine, getattr(r.diagnostics, corr.diagnostic)) for r in scored if r.diagnostics is not None]
        assert corr.n == len(pairs)
        reference = scipy_stats.spearmanr([a for a, _ in pairs], [b for _, b in pairs])
        assert corr.rho == pytest.approx(reference.statistic, rel=1e-10)
        assert corr.p_value == pytest.approx(reference.pvalue, rel=1e-10)


def test_per_question(records: list[AlignmentRecord], report: Report) -> None:
    expected: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        key = (r.tree_id, r.question_id, r.teacher, r.method)
        expected.setdefault(key, [])
        if r.cosine is not None:
            expected[key].append(r.cosine)
    assert len(report.per_question) == len(expected) == 3 * 3
    for entry in report.per_question:
        values = expected[(entry.tree_id, entry.question_id, entry.teacher, entry.method)]
        assert entry.nodes == len(values)
        assert entry.mean_cosine == pytest.approx(sum(values) / len(values), rel=1e-12)


def test_json_round_trip(report: Report) -> None:
    data = report.to_dict()
    text = json.dumps(data, allow_nan=False)
    restored = Report.from_dict(json.loads(text))
    assert restored.to_dict() == data
    assert isinstance(restored.groups[0].skip_reasons, dict)
    assert restored.ranking[0].teacher == "good"


def test_deterministic_and_independent_of_record_order(records: list[AlignmentRecord], report: Report) -> None:
    assert build_report(records, ANALYSIS, seed=3).to_dict() == report.to_dict()
    shuffled = list(records)
    random.Random(0).shuffle(shuffled)
    _assert_nested_close(build_report(shuffled, ANALYSIS, seed=3).to_dict(), report.to_dict())
    other_seed = build_report(records, ANALYSIS, seed=4)
    assert other_seed.groups[0].mean_cosine == report.groups[0].mean_cosine
    assert other_seed.groups[0].mean_ci_low != report.groups[0].mean_ci_low


def _assert_nested_close(got, expected) -> None:
    if isinstance(expected, dict):
        assert got.keys() == expected.keys()
        for key in expected:
            _assert_nested_close(got[key], expected[key])
    elif isinstance(expected, list):
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            _assert_nested_close(a, b)
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    else:
        assert got == expected


def test_bootstrap_unit_question_resamples_whole_trees() -> None:
    # All nodes in one tree: resampling questions can only redraw that tree, so the CI collapses to the
    # mean; resampling rollouts still varies.
    rng = np.random.default_rng(1)
    records = [
        make_record(teacher="t", ideal=[1.0, -1.0], distill=rng.normal(size=2).tolist(), rollout_index=i // 3, depth=i % 3)
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
        make_record(teacher="z", ideal=[0.001, -0.001], distill=[1.0, -1.0], skip_reason=SkipReason.IDEAL_NORM_BELOW_THRESHOLD),
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
        make_record(teacher="t", ideal=[1.0, -1.0], distill=rng.normal(size=2).tolist(), rollout_index=rs[0], rollouts=rs, depth=k)
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
    assert (by_split["correct"].nodes, by_split["incorrect"].nodes, by_split["mixed"].nodes, by_split["all"].nodes) == (1, 1, 1, 3)
    assert by_split["all"].rollouts == 2
    comparison = report.comparisons[0]
    assert (comparison.nodes_incorrect, comparison.nodes_correct) == (1, 1)
    assert comparison.diff == pytest.approx(records[1].cosine - records[0].cosine)
