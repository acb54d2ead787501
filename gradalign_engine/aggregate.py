"""Aggregate per-node alignment records into a report: the numbers a team reads to choose a teacher.

From a list of :class:`~gradalign_engine.records.AlignmentRecord` it builds a :class:`Report`:
- ``groups``: per (teacher, method, split) with split in correct / incorrect / mixed / all: node counts, the
  mean cosine with a cluster-bootstrap CI, the weighted (by ||g*||) and pooled cosines, the fraction of
  positive alignments, the mean teacher advantage and the skip reasons;
- ``comparisons``: per (teacher, method), incorrect minus correct rollouts (cluster bootstrap and
  one-sided Mann-Whitney U, H1: alignment is higher on incorrect rollouts);
- ``correlations``: per (teacher, method, diagnostic), Spearman's rho of alignment with a divergence,
  the student entropy or the normalised depth;
- ``ranking``: per method, teachers by mean cosine over all rollouts;
- ``per_question``: mean cosine per (tree, question, teacher, method).

Only non-skipped nodes (records with a cosine) enter the statistics; skipped ones are counted with
their reasons. A record is one distinct node (docs/method.md, "Distinct nodes"), counted once
whatever the number of rollouts through it. Splits: a node is "correct" when every base rollout
through it is correct, "incorrect" when every one is incorrect, and "mixed" otherwise; mixed nodes
enter "all" but neither side of the incorrect-vs-correct comparison, so no measurement is used
twice and the two compared groups share no rollout.

The bootstrap resamples whole questions (tree_id) or whole rollouts, per
``AnalysisConfig.bootstrap_unit``, because the nodes of one path are correlated. With shared nodes a
"rollout" cluster is a connected group of rollouts: two rollouts are in one cluster when some node of
the selection being resampled lies on both, so a shared node is never split between clusters.

This module knows nothing of models, tensors, trees or gRPC: it reads records (plain data) and
returns plain data. The result depends only on the multiset of records and the seed, not on their order
(up to floating-point rounding of sums).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .aggregate_stats import DIAGNOSTIC_NAMES, columns, correlations, group_stats, rollout_clusters, split_comparison
from .config import METHODS, AnalysisConfig
from .records import AlignmentRecord
from .report import Correlation, GroupStats, QuestionStats, RankEntry, Report, ScreenedQuestion, SplitComparison

__all__ = [
    "SPLITS",
    "DIAGNOSTIC_NAMES",
    "GroupStats",
    "SplitComparison",
    "Correlation",
    "RankEntry",
    "QuestionStats",
    "ScreenedQuestion",
    "Report",
    "build_report",
]

#: Rollout-outcome splits of every group.
SPLITS = ("correct", "incorrect", "mixed", "all")
_NAN = float("nan")


def _ranking(groups: Iterable[GroupStats], methods: Sequence[str]) -> list[RankEntry]:
    by_method: dict[str, list[GroupStats]] = defaultdict(list)
    for group in groups:
        if group.split == "all":
            by_method[group.method].append(group)

    def order(group: GroupStats) -> tuple[int, float, str]:
        # Highest mean first; teachers without a mean last; names break ties deterministically.
        has_mean = math.isfinite(group.mean_cosine)
        return (0 if has_mean else 1, -group.mean_cosine if has_mean else 0.0, group.teacher)

    entries = []
    for method in methods:
        ordered = sorted(by_method.get(method, []), key=order)
        for rank, group in enumerate(ordered, start=1):
            entries.append(
                RankEntry(
                    method=method,
                    rank=rank,
                    teacher=group.teacher,
                    mean_cosine=group.mean_cosine,
                    mean_ci_low=group.mean_ci_low,
                    mean_ci_high=group.mean_ci_high,
                    nodes=group.nodes,
                )
            )
    return entries


def _per_question(records: Sequence[AlignmentRecord]) -> list[QuestionStats]:
    cosines: dict[tuple[str, str, str, str], list[float]] = {}
    for record in records:
        scored = cosines.setdefault((record.tree_id, record.question_id, record.teacher, record.method), [])
        if record.cosine is not None:
            scored.append(float(record.cosine))
    return [
        QuestionStats(
            tree_id=tree_id,
            question_id=question_id,
            teacher=teacher,
            method=method,
            mean_cosine=math.fsum(values) / len(values) if values else _NAN,
            nodes=len(values),
        )
        for (tree_id, question_id, teacher, method), values in sorted(cosines.items())
    ]


def _screened_out(trees: Iterable[Any]) -> list[ScreenedQuestion]:
    out = []
    for tree in trees:
        summary = tree if isinstance(tree, dict) else dataclasses.asdict(tree)
        if summary.get("screened_out"):
            n, k = int(summary["screen_rollouts"]), int(summary["screen_successes"])
            out.append(ScreenedQuestion(summary["tree_id"], summary["question_id"], n, k, k / n if n else _NAN))
    return sorted(out, key=lambda s: (s.question_id, s.tree_id))


def _method_order(present: Iterable[str]) -> list[str]:
    """Canonical methods in config order, then any others alphabetically."""
    present = set(present)
    return [m for m in METHODS if m in present] + sorted(present - set(METHODS))


def build_report(
    records: Sequence[AlignmentRecord],
    analysis: AnalysisConfig,
    seed: int = 0,
    confidence: float = 0.95,
    trees: Iterable[Any] = (),
) -> Report:
    """Aggregate ``records`` into a :class:`Report`.

    ``analysis.bootstrap_samples`` and ``analysis.bootstrap_unit`` set the bootstrap; ``confidence`` is
    the level of every interval. ``trees`` (TreeSummary objects or their dicts) lets the report list the
    questions that screening left out. Deterministic given the records (in any order) and ``seed``.
    """
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    records = list(records)
    report = Report(
        records=len(records),
        seed=seed,
        bootstrap_unit=analysis.bootstrap_unit,
        bootstrap_samples=analysis.bootstrap_samples,
        confidence=confidence,
        screened_out=_screened_out(trees),
    )
    if not records:
        return report
    cols = columns(records)
    if analysis.bootstrap_unit == "rollout":
        clusters = lambda mask: rollout_clusters(cols, mask)  # noqa: E731 - connected groups of the selection
    else:
        clusters = lambda mask: cols.question_cluster  # noqa: E731
    n_boot = analysis.bootstrap_samples
    methods = _method_order(cols.method.tolist())
    teachers = sorted(set(cols.teacher.tolist()))
    split_masks = {
        "correct": cols.outcome == 1,
        "incorrect": cols.outcome == 0,
        "mixed": cols.outcome == -1,
        "all": np.ones(len(records), dtype=bool),
    }
    for teacher in teachers:
        teacher_mask = cols.teacher == teacher
        for method in methods:
            selection = teacher_mask & (cols.method == method)
            if not selection.any():
                continue
            for split in SPLITS:
                report.groups.append(
                    group_stats(
                        cols,
                        selection & split_masks[split],
                        teacher,
                        method,
                        split,
                        clusters,
                        n_boot,
                        seed,
                        confidence,
                    )
                )
            report.comparisons.append(
                split_comparison(cols, selection, teacher, method, clusters, n_boot, seed, confidence)
            )
            report.correlations.extend(correlations(cols, selection, teacher, method))
    report.ranking = _ranking(report.groups, methods)
    report.per_question = _per_question(records)
    return report
