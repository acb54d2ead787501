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
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .config import METHODS, AnalysisConfig
from .records import AlignmentRecord
from .stats import cluster_bootstrap_diff, cluster_bootstrap_mean, mann_whitney_greater, spearman

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
#: Quantities whose rank correlation with alignment is reported (Diagnostics fields and t/T).
DIAGNOSTIC_NAMES = ("kl_pq", "kl_qp", "js", "l2", "cos_pq", "student_entropy", "normalized_depth")
_NAN = float("nan")


@dataclass
class GroupStats:
    """Alignment of one teacher and method over one rollout-outcome split."""

    teacher: str
    method: str
    split: str  # "correct", "incorrect", "mixed" or "all"
    nodes: int  # non-skipped nodes (records with a cosine)
    skipped: int  # skipped records
    rollouts: int  # distinct (tree_id, rollout) pairs through the non-skipped nodes
    questions: int  # distinct tree_id among the non-skipped nodes
    mean_cosine: float
    mean_ci_low: float  # percentile CI of the cluster bootstrap (nan without resamples)
    mean_ci_high: float
    weighted_cosine: float  # sum ||g*|| cos / sum ||g*||
    pooled_cosine: float  # cosine of all ideal vectors concatenated vs all distillation vectors
    fraction_positive: float  # fraction of nodes with cosine > 0
    mean_teacher_advantage: float  # over non-skipped nodes that have one
    skip_reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class SplitComparison:
    """Incorrect minus correct rollouts for one teacher and method (H1: incorrect > correct)."""

    teacher: str
    method: str
    nodes_incorrect: int
    nodes_correct: int
    mean_incorrect: float
    mean_correct: float
    diff: float  # mean_incorrect - mean_correct
    diff_ci_low: float
    diff_ci_high: float
    bootstrap_p: float  # one-sided, (#{bootstrap diffs <= 0} + 1) / (n_boot + 1)
    mann_whitney_u: float  # U of the incorrect-rollout cosines
    mann_whitney_p: float  # one-sided


@dataclass
class Correlation:
    """Spearman correlation of alignment with one diagnostic over a teacher's non-skipped nodes."""

    teacher: str
    method: str
    diagnostic: str
    rho: float
    p_value: float  # two-sided
    n: int  # nodes where both the cosine and the diagnostic are finite


@dataclass
class RankEntry:
    """One teacher's place for one method, by mean cosine over all rollouts (nan means last)."""

    method: str
    rank: int  # 1-based
    teacher: str
    mean_cosine: float
    mean_ci_low: float
    mean_ci_high: float
    nodes: int


@dataclass
class QuestionStats:
    """Mean alignment of one teacher and method on one question's tree."""

    tree_id: str
    question_id: str
    teacher: str
    method: str
    mean_cosine: float  # nan when every node was skipped
    nodes: int


@dataclass
class ScreenedQuestion:
    """A question the screening pre-pass left out: its success rate lay outside the band."""

    tree_id: str
    question_id: str
    rollouts: int  # screening rollouts
    successes: int  # of those, verified correct
    success_rate: float


@dataclass
class Report:
    """Everything aggregated from one set of records, with the settings that produced it."""

    records: int  # records read, skipped included
    seed: int
    bootstrap_unit: str
    bootstrap_samples: int
    confidence: float
    groups: list[GroupStats] = field(default_factory=list)
    comparisons: list[SplitComparison] = field(default_factory=list)
    correlations: list[Correlation] = field(default_factory=list)
    ranking: list[RankEntry] = field(default_factory=list)
    per_question: list[QuestionStats] = field(default_factory=list)
    screened_out: list[ScreenedQuestion] = field(default_factory=list)  # questions without nodes, with their rates

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe data: nan and infinities become None."""
        return _json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        """Inverse of :meth:`to_dict` (None in a float field becomes nan again)."""
        data = dict(data)
        nested = {
            "groups": GroupStats,
            "comparisons": SplitComparison,
            "correlations": Correlation,
            "ranking": RankEntry,
            "per_question": QuestionStats,
            "screened_out": ScreenedQuestion,
        }
        for name, item_cls in nested.items():
            data[name] = [_from_plain(item_cls, item) for item in data.get(name, [])]
        return _from_plain(cls, data)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _from_plain(cls: type, data: dict[str, Any]) -> Any:
    data = dict(data)
    for f in dataclasses.fields(cls):
        if f.type == "float" and data.get(f.name, 0.0) is None:
            data[f.name] = _NAN
    if "skip_reasons" in data:
        data["skip_reasons"] = dict(data["skip_reasons"])
    return cls(**data)


# --------------------------------------------------------------------------------------------------
# Columnar view of the records
# --------------------------------------------------------------------------------------------------


@dataclass
class _Columns:
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


def _rollout_clusters(cols: _Columns, selection: np.ndarray) -> np.ndarray:
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


def _columns(records: Sequence[AlignmentRecord]) -> _Columns:
    cosine = np.array([_float_or_nan(r.cosine) for r in records], dtype=np.float64)
    scored = np.array([r.cosine is not None for r in records], dtype=bool)
    diagnostics = np.full((len(records), len(DIAGNOSTIC_NAMES)), _NAN, dtype=np.float64)
    for i, record in enumerate(records):
        diagnostics[i, -1] = record.normalized_depth
        if record.diagnostics is not None:
            diagnostics[i, :-1] = [getattr(record.diagnostics, name) for name in DIAGNOSTIC_NAMES[:-1]]
    dot, ideal_sq, distill_sq = _vector_products(records, scored)
    return _Columns(
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


def _group_stats(
    cols: _Columns, selection: np.ndarray, teacher: str, method: str, split: str,
    clusters: Callable[[np.ndarray], np.ndarray], n_boot: int, seed: int, confidence: float,
) -> GroupStats:
    scored = selection & cols.scored
    cos = cols.cosine[scored]
    mean, low, high = cluster_bootstrap_mean(
        cos, clusters(scored)[scored], n_boot=n_boot, seed=_derived_seed(seed, "mean", teacher, method, split),
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


def _split_comparison(
    cols: _Columns, selection: np.ndarray, teacher: str, method: str,
    clusters: Callable[[np.ndarray], np.ndarray], n_boot: int, seed: int, confidence: float,
) -> SplitComparison:
    incorrect = selection & cols.scored & (cols.outcome == 0)
    correct = selection & cols.scored & (cols.outcome == 1)
    diff, low, high, p_boot = cluster_bootstrap_diff(
        cols.cosine[incorrect], clusters(incorrect)[incorrect], cols.cosine[correct], clusters(correct)[correct],
        n_boot=n_boot, seed=_derived_seed(seed, "diff", teacher, method), confidence=confidence,
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


def _correlations(cols: _Columns, selection: np.ndarray, teacher: str, method: str) -> list[Correlation]:
    scored = selection & cols.scored
    cos = cols.cosine[scored]
    out = []
    for column, name in enumerate(DIAGNOSTIC_NAMES):
        values = cols.diagnostics[scored, column]
        rho, p_value = spearman(cos, values)
        n = int(np.count_nonzero(np.isfinite(cos) & np.isfinite(values)))
        out.append(Correlation(teacher=teacher, method=method, diagnostic=name, rho=rho, p_value=p_value, n=n))
    return out


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
                    method=method, rank=rank, teacher=group.teacher, mean_cosine=group.mean_cosine,
                    mean_ci_low=group.mean_ci_low, mean_ci_high=group.mean_ci_high, nodes=group.nodes,
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
            tree_id=tree_id, question_id=question_id, teacher=teacher, method=method,
            mean_cosine=math.fsum(values) / len(values) if values else _NAN, nodes=len(values),
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
    records: Sequence[AlignmentRecord], analysis: AnalysisConfig, seed: int = 0, confidence: float = 0.95,
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
        records=len(records), seed=seed, bootstrap_unit=analysis.bootstrap_unit,
        bootstrap_samples=analysis.bootstrap_samples, confidence=confidence,
        screened_out=_screened_out(trees),
    )
    if not records:
        return report
    cols = _columns(records)
    if analysis.bootstrap_unit == "rollout":
        clusters = lambda mask: _rollout_clusters(cols, mask)  # noqa: E731 - connected groups of the selection
    else:
        clusters = lambda mask: cols.question_cluster  # noqa: E731
    n_boot = analysis.bootstrap_samples
    methods = _method_order(cols.method.tolist())
    teachers = sorted(set(cols.teacher.tolist()))
    split_masks = {"correct": cols.outcome == 1, "incorrect": cols.outcome == 0, "mixed": cols.outcome == -1,
                   "all": np.ones(len(records), dtype=bool)}
    for teacher in teachers:
        teacher_mask = cols.teacher == teacher
        for method in methods:
            selection = teacher_mask & (cols.method == method)
            if not selection.any():
                continue
            for split in SPLITS:
                report.groups.append(
                    _group_stats(
                        cols, selection & split_masks[split], teacher, method, split,
                        clusters, n_boot, seed, confidence,
                    )
                )
            report.comparisons.append(
                _split_comparison(cols, selection, teacher, method, clusters, n_boot, seed, confidence)
            )
            report.correlations.extend(_correlations(cols, selection, teacher, method))
    report.ranking = _ranking(report.groups, methods)
    report.per_question = _per_question(records)
    return report
