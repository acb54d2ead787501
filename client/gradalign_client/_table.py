"""The ranked teacher table printed by ``gradalign vet`` and ``gradalign demo`` (and its CSV form)."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from ._types import Report

__all__ = ["table_rows", "format_table", "write_csv", "gate_value", "skip_reasons"]

COLUMNS = (
    "method",
    "rank",
    "teacher",
    "mean_cosine",
    "ci_low",
    "ci_high",
    "weighted_cosine",
    "pooled_cosine",
    "fraction_positive",
    "mean_incorrect",
    "mean_correct",
    "nodes",
    "skipped",
)


def table_rows(report: Report) -> list[dict[str, Any]]:
    """One row per ranking entry (method, then rank), joined with its 'all' group and comparison."""
    comparisons = {(c.teacher, c.method): c for c in report.comparisons}
    rows = []
    for entry in report.ranking:
        group = report.group(entry.teacher, entry.method, "all")
        comp = comparisons.get((entry.teacher, entry.method))
        nan = float("nan")
        rows.append(
            {
                "method": entry.method,
                "rank": entry.rank,
                "teacher": entry.teacher,
                "mean_cosine": entry.mean_cosine,
                "ci_low": entry.mean_ci_low,
                "ci_high": entry.mean_ci_high,
                "weighted_cosine": group.weighted_cosine if group else nan,
                "pooled_cosine": group.pooled_cosine if group else nan,
                "fraction_positive": group.fraction_positive if group else nan,
                "mean_incorrect": comp.mean_incorrect if comp else nan,
                "mean_correct": comp.mean_correct if comp else nan,
                "nodes": entry.nodes,
                "skipped": group.skipped if group else 0,
            }
        )
    return rows


def _num(value: float, width: int = 7) -> str:
    return (
        f"{'-':>{width}}"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:>{width}.3f}"
    )


def format_table(report: Report) -> str:
    """A plain-text table, one block per method, best teacher first."""
    rows = table_rows(report)
    if not rows:
        return "no alignment records (no analysis nodes were scored)\n"
    width = max(7, *(len(r["teacher"]) for r in rows))
    level = int(round(report.confidence * 100))
    header = (
        f"{'rank':>4}  {'teacher':<{width}}  {'mean':>7}  {f'{level}% CI':^17}  {'weighted':>8}  {'pooled':>7}  "
        f"{'frac>0':>7}  {'incorr.':>7}  {'correct':>7}  {'nodes':>6}  {'skipped':>7}"
    )
    out = io.StringIO()
    method = None
    for r in rows:
        if r["method"] != method:
            method = r["method"]
            out.write(f"\n{method}\n{header}\n")
        ci = f"[{_num(r['ci_low'], 6).strip()}, {_num(r['ci_high'], 6).strip()}]"
        out.write(
            f"{r['rank']:>4}  {r['teacher']:<{width}}  {_num(r['mean_cosine'])}  {ci:^17}  "
            f"{_num(r['weighted_cosine'], 8)}  "
            f"{_num(r['pooled_cosine'])}  {_num(r['fraction_positive'])}  {_num(r['mean_incorrect'])}  "
            f"{_num(r['mean_correct'])}  {r['nodes']:>6}  {r['skipped']:>7}\n"
        )
    out.write(
        f"\n{report.records} records; mean = mean cosine(ideal, teacher update) over analysed nodes, "
        f"CI by a {report.bootstrap_unit}-level bootstrap ({report.bootstrap_samples} resamples).\n"
    )
    reasons = skip_reasons(report)
    if reasons:
        out.write("skipped records by reason: " + ", ".join(f"{k} {v}" for k, v in reasons.items()) + "\n")
    return out.getvalue()


def skip_reasons(report: Report) -> dict[str, int]:
    """Skipped records by reason over every teacher and method (the 'all' split), most frequent first."""
    totals: dict[str, int] = {}
    for g in report.groups:
        if g.split == "all":
            for reason, count in g.skip_reasons.items():
                totals[reason] = totals.get(reason, 0) + count
    return dict(sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])))


def write_csv(report: Report, path: str) -> None:
    """Write the table as CSV (NaN as an empty cell)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in table_rows(report):
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})


def gate_value(report: Report, teacher: str, method: str | None) -> tuple[str, float]:
    """(method, mean cosine) of ``teacher`` for the gate; the first ranked method by default."""
    entries = [e for e in report.ranking if e.teacher == teacher and (method is None or e.method == method)]
    if not entries:
        raise KeyError(
            f"teacher {teacher!r}" + (f" with method {method!r}" if method else "") + " is not in the report"
        )
    return entries[0].method, entries[0].mean_cosine
