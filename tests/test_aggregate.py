"""build_report on a synthetic record set (3 trees, two teachers, two methods), each number checked
against a hand computation in plain Python or scipy: groups, ranking, comparisons, correlations,
per-question means, JSON round trip and determinism. Small hand-built cases live in
test_aggregate_scenarios.py."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict

import numpy as np
import pytest
from aggregate_helpers import ANALYSIS, make_record
from scipy import stats as scipy_stats

from gradalign_engine.aggregate import DIAGNOSTIC_NAMES, Report, build_report
from gradalign_engine.records import AlignmentRecord, Diagnostics, SkipReason


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
                    teacher=teacher,
                    method=method,
                    ideal=ideal.tolist(),
                    distill=distill.tolist(),
                    tree_id=f"t{tree}",
                    rollout_index=rollouts[0],
                    correct=outcome,
                    rollouts=rollouts,
                    depth=depth,
                    skip_reason=skip,
                    advantage=float(gen.normal()) if depth != 6 else None,
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
        r for r in records if r.teacher == teacher and r.method == method and (split == "all" or r.outcome == split)
    ]


@pytest.fixture(scope="module")
def records() -> list[AlignmentRecord]:
    return synthetic_records()


@pytest.fixture(scope="module")
def report(records: list[AlignmentRecord]) -> Report:
    return build_report(records, ANALYSIS, seed=3)


def test_group_counts_and_order(report: Report) -> None:
    keys = [(g.teacher, g.method, g.split) for g in report.groups]
    assert keys == [
        ("bad", "reverse_kl", "correct"),
        ("bad", "reverse_kl", "incorrect"),
        ("bad", "reverse_kl", "mixed"),
        ("bad", "reverse_kl", "all"),
        ("good", "reverse_kl", "correct"),
        ("good", "reverse_kl", "incorrect"),
        ("good", "reverse_kl", "mixed"),
        ("good", "reverse_kl", "all"),
        ("good", "jsd", "correct"),
        ("good", "jsd", "incorrect"),
        ("good", "jsd", "mixed"),
        ("good", "jsd", "all"),
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
    assert (
        by_key[("good", "reverse_kl", "all")].mean_cosine
        > 0.3
        > -0.3
        > by_key[("bad", "reverse_kl", "all")].mean_cosine
    )


def test_comparisons_match_hand_computation(records: list[AlignmentRecord], report: Report) -> None:
    assert [(c.teacher, c.method) for c in report.comparisons] == [
        ("bad", "reverse_kl"),
        ("good", "reverse_kl"),
        ("good", "jsd"),
    ]
    for comparison in report.comparisons:
        incorrect = [
            r.cosine
            for r in _selected(records, comparison.teacher, comparison.method, "incorrect")
            if r.cosine is not None
        ]
        correct = [
            r.cosine
            for r in _selected(records, comparison.teacher, comparison.method, "correct")
            if r.cosine is not None
        ]
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
