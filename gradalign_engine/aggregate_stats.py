"""The statistics of one selection of records: the columnar view, group statistics, comparisons and
correlations that :func:`gradalign_engine.aggregate.build_report` assembles.

Rollout clusters for the bootstrap are connected groups of rollouts (union-find over the selection's
nodes); question clusters are trees. Knows records and numbers; knows nothing of models or gRPC.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from .records import AlignmentRecord
from .report import Correlation, GroupStats, SplitComparison
from .stats import cluster_bootstrap_diff, cluster_bootstrap_mean, mann_whitney_greater, spearman

__all__ = [
    "DIAGNOSTIC_NAMES",
    "Columns",
    "columns",
    "rollout_clusters",
    "group_stats",
    "split_comparison",
    "correlations",
]

#: Quantities whose rank correlation with alignment is reported (Diagnostics fields and t/T).
DIAGNOSTIC_NAMES = ("kl_pq", "kl_qp", "js", "l2", "cos_pq", "student_entropy", "normalized_depth")
_NAN = float("nan")


# --------------------------------------------------------------------------------------------------
# Columnar view of the records
# --------------------------------------------------------------------------------------------------


@dataclass
class Columns:
    """One entry per record; floats are nan where a record has no value."""

    teacher: np.ndarray  # object: teacher names
    method: np.ndarray  # object: method names
    outcome: np.ndarray  # int8: 1 every rollout through the node correct, 0 every one incorrect, -1 mixed
    cosine: np.ndarray  # nan when skipped
    scored: np.ndarray  # bool: has a cosine
    ideal_norm: np.ndarray
    advantage: np.ndarray
    dot: np.ndarray  # <g*, d> over S(u), from the stored vectors (0 for skipped records)
    ideal_sq: np.ndarray  # ||g*||^2
    distill_sq: np.ndarray  # ||d||^2
    rollout_ids: list[np.ndarray]  # per record: int ids of the (tree_id, rollout) pairs through it, sorted order
    question_cluster: np.ndarray  # int ids of tree_id, numbered in sorted order
    diagnostics: np.ndarray  # [N, len(DIAGNOSTIC_NAMES)]
    skip_reason: np.ndarray  # object: reason strings ("" when scored)


def _float_or_nan(value: float | None) -> float:
    return _NAN if value is None else float(value)


def _sorted_ids(labels: Sequence[Any]) -> np.ndarray:
    """Integer ids of labels, numbered in sorted label order (so they do not depend on record order)."""
    index_of = {label: i for i, label in enumerate(sorted(set(labels)))}
    return np.fromiter((index_of[label] for label in labels), dtype=np.int64, count=len(labels))


def _vector_products(
    records: Sequence[AlignmentRecord], scored: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-record <g*, d>, ||g*||^2 and ||d||^2 over S(u), vectorised over all scored records at once."""
    count = len(records)
    scored_records = [r for r, keep in zip(records, scored) if keep]
    for record in scored_records:
        if len(record.ideal) != len(record.distill):
            raise ValueError(
                f"record (tree {record.tree_id!r}, rollout {record.rollout_index}, depth {record.depth}, "
                f"teacher {record.teacher!r}, method {record.method!r}) has {len(record.ideal)} ideal and "
                f"{len(record.distill)} distillation entries"
            )
    lengths = np.fromiter((len(r.ideal) for r in scored_records), dtype=np.int64, count=len(scored_records))
    total = int(lengths.sum())
    ideal = np.fromiter(chain.from_iterable(r.ideal for r in scored_records), dtype=np.float64, count=total)
    distill = np.fromiter(chain.from_iterable(r.distill for r in scored_records), dtype=np.float64, count=total)
    owner = np.repeat(np.flatnonzero(scored), lengths)  # record index of each vector entry
    dot = np.bincount(owner, weights=ideal * distill, minlength=count)
    ideal_sq = np.bincount(owner, weights=ideal * ideal, minlength=count)
    distill_sq = np.bincount(owner, weights=distill * distill, minlength=count)
    return dot, ideal_sq, distill_sq


def _rollout_ids(records: Sequence[AlignmentRecord]) -> list[np.ndarray]:
    """Per record, int ids of the (tree_id, rollout) pairs through its node, numbered in sorted order."""
    pairs = [[(r.tree_id, i) for i in r.rollouts] for r in records]
    index_of = {pair: k for k, pair in enumerate(sorted({p for ps in pairs for p in ps}))}
    return [np.array(sorted(index_of[p] for p in ps), dtype=np.int64) for ps in pairs]


def rollout_clusters(cols: Columns, selection: np.ndarray) -> np.ndarray:
    """Cluster label of each selected record: rollouts joined by the selected nodes they share.

    Union-find over rollout ids; a component is labelled by its smallest rollout id, so labels do not
    depend on record order. Unselected records get -1.
    """
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    chosen = np.flatnonzero(selection)
    for k in chosen:
        ids = cols.rollout_ids[k]
        root = find(int(ids[0]))
        for other in ids[1:]:
            other_root = find(int(other))
            if other_root != root:
                parent[max(root, other_root)] = min(root, other_root)
                root = min(root, other_root)
    labels = np.full(len(cols.rollout_ids), -1, dtype=np.int64)
    for k in chosen:
        labels[k] = find(int(cols.rollout_ids[k][0]))
    return labels


def columns(records: Sequence[AlignmentRecord]) -> Columns:
    cosine = np.array([_float_or_nan(r.cosine) for r in records], dtype=np.float64)
    scored = np.array([r.cosine is not None for r in records], dtype=bool)
    diagnostics = np.full((len(records), len(DIAGNOSTIC_NAMES)), _NAN, dtype=np.float64)
    for i, record in enumerate(records):
        diagnostics[i, -1] = record.normalized_depth
        if record.diagnostics is not None:
            diagnostics[i, :-1] = [getattr(record.diagnostics, name) for name in DIAGNOSTIC_NAMES[:-1]]
    dot, ideal_sq, distill_sq = _vector_products(records, scored)
    return Columns(
        teacher=np.array([r.teacher for r in records], dtype=object),
        method=np.array([r.method for r in records], dtype=object),
        outcome=np.array([{True: 1, False: 0}.get(r.rollout_correct, -1) for r in records], dtype=np.int8),
        cosine=cosine,
        scored=scored,
        ideal_norm=np.array([float(r.ideal_norm) for r in records], dtype=np.float64),
        advantage=np.array([_float_or_nan(r.teacher_advantage) for r in records], dtype=np.float64),
        dot=dot,
        ideal_sq=ideal_sq,
        distill_sq=distill_sq,
        rollout_ids=_rollout_ids(records),
        question_cluster=_sorted_ids([r.tree_id for r in records]),
        diagnostics=diagnostics,
        skip_reason=np.array(
            ["" if r.cosine is not None else (r.skip_reason or "unspecified") for r in records], dtype=object
        ),
    )


# --------------------------------------------------------------------------------------------------
# Statistics of one selection of records
# --------------------------------------------------------------------------------------------------


def _derived_seed(seed: int, *parts: str) -> int:
    """A seed per group, stable across processes (no Python hash), so groups do not share draws."""
    tag = zlib.crc32("\x1f".join(parts).encode("utf-8"))
    return int(np.random.SeedSequence([seed, tag]).generate_state(1)[0])


def _safe_ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 and math.isfinite(denominator) else _NAN


def group_stats(
    cols: Columns,
    selection: np.ndarray,
    teacher: str,
    method: str,
    split: str,
    clusters: Callable[[np.ndarray], np.ndarray],
    n_boot: int,
    seed: int,
    confidence: float,
) -> GroupStats:
    scored = selection & cols.scored
    cos = cols.cosine[scored]
    mean, low, high = cluster_bootstrap_mean(
        cos,
        clusters(scored)[scored],
        n_boot=n_boot,
        seed=_derived_seed(seed, "mean", teacher, method, split),
        confidence=confidence,
    )
    weights = cols.ideal_norm[scored]
    weighted_ok = np.isfinite(weights)
    advantage = cols.advantage[scored]
    advantage = advantage[np.isfinite(advantage)]
    pooled_norms = math.sqrt(float(cols.ideal_sq[scored].sum()) * float(cols.distill_sq[scored].sum()))
    return GroupStats(
        teacher=teacher,
        method=method,
        split=split,
        nodes=int(scored.sum()),
        skipped=int((selection & ~cols.scored).sum()),
        rollouts=len({int(i) for k in np.flatnonzero(scored) for i in cols.rollout_ids[k]}),
        questions=int(np.unique(cols.question_cluster[scored]).size),
        mean_cosine=mean,
        mean_ci_low=low,
        mean_ci_high=high,
        weighted_cosine=_safe_ratio(
            float(np.dot(weights[weighted_ok], cos[weighted_ok])), float(weights[weighted_ok].sum())
        ),
        pooled_cosine=_safe_ratio(float(cols.dot[scored].sum()), pooled_norms),
        fraction_positive=float(np.mean(cos > 0)) if cos.size else _NAN,
        mean_teacher_advantage=float(advantage.mean()) if advantage.size else _NAN,
        skip_reasons=dict(sorted(Counter(cols.skip_reason[selection & ~cols.scored].tolist()).items())),
    )


def split_comparison(
    cols: Columns,
    selection: np.ndarray,
    teacher: str,
    method: str,
    clusters: Callable[[np.ndarray], np.ndarray],
    n_boot: int,
    seed: int,
    confidence: float,
) -> SplitComparison:
    incorrect = selection & cols.scored & (cols.outcome == 0)
    correct = selection & cols.scored & (cols.outcome == 1)
    diff, low, high, p_boot = cluster_bootstrap_diff(
        cols.cosine[incorrect],
        clusters(incorrect)[incorrect],
        cols.cosine[correct],
        clusters(correct)[correct],
        n_boot=n_boot,
        seed=_derived_seed(seed, "diff", teacher, method),
        confidence=confidence,
    )
    u_statistic, p_mw = mann_whitney_greater(cols.cosine[incorrect], cols.cosine[correct])
    return SplitComparison(
        teacher=teacher,
        method=method,
        nodes_incorrect=int(incorrect.sum()),
        nodes_correct=int(correct.sum()),
        mean_incorrect=float(cols.cosine[incorrect].mean()) if incorrect.any() else _NAN,
        mean_correct=float(cols.cosine[correct].mean()) if correct.any() else _NAN,
        diff=diff,
        diff_ci_low=low,
        diff_ci_high=high,
        bootstrap_p=p_boot,
        mann_whitney_u=u_statistic,
        mann_whitney_p=p_mw,
    )


def correlations(cols: Columns, selection: np.ndarray, teacher: str, method: str) -> list[Correlation]:
    scored = selection & cols.scored
    cos = cols.cosine[scored]
    out = []
    for column, name in enumerate(DIAGNOSTIC_NAMES):
        values = cols.diagnostics[scored, column]
        rho, p_value = spearman(cos, values)
        n = int(np.count_nonzero(np.isfinite(cos) & np.isfinite(values)))
        out.append(Correlation(teacher=teacher, method=method, diagnostic=name, rho=rho, p_value=p_value, n=n))
    return out
