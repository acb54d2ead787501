"""The study's Markdown: the tables (a)-(d) and a verdict on each of the paper's findings.

Reads the plain data ``study.run_study`` returns (after JSON); writes text only. A verdict states the
numbers it rests on and says "holds", "does not reproduce" or "inconclusive": a finding that does
not reproduce is reported with its numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["study_markdown", "findings"]


def _f(value: Any, digits: int = 3, signed: bool = True) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _ci(low: Any, high: Any) -> str:
    return f"[{_f(low)}, {_f(high)}]"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _contexts(rows: list[dict]) -> list[str]:
    return _table(
        ("context", "questions", "samples", "accuracy", "95% CI"),
        (
            (
                r["context"],
                r["questions"],
                r["samples"],
                _f(r["accuracy"], signed=False),
                _ci(r["ci_low"], r["ci_high"]),
            )
            for r in rows
        ),
    )


def _groups(report: dict) -> list[str]:
    rows = []
    for g in report["groups"]:
        if g["nodes"] == 0 and g["split"] == "mixed":
            continue
        rows.append(
            (
                g["teacher"],
                g["method"],
                g["split"],
                g["nodes"],
                g["rollouts"],
                _f(g["mean_cosine"]),
                _ci(g["mean_ci_low"], g["mean_ci_high"]),
                _f(g["fraction_positive"], signed=False),
                _f(g["mean_teacher_advantage"]),
            )
        )
    return _table(
        ("teacher", "method", "split", "nodes", "rollouts", "mean cos", "95% CI", "frac > 0", "teacher adv."), rows
    )


def _comparisons(report: dict) -> list[str]:
    rows = (
        (
            c["teacher"],
            c["method"],
            c["nodes_incorrect"],
            c["nodes_correct"],
            _f(c["mean_incorrect"]),
            _f(c["mean_correct"]),
            _f(c["diff"]),
            _ci(c["diff_ci_low"], c["diff_ci_high"]),
            _half(c),
            _f(c["bootstrap_p"], signed=False),
            _f(c["mann_whitney_p"], signed=False),
        )
        for c in report["comparisons"]
    )
    return _table(
        (
            "teacher",
            "method",
            "n incorrect",
            "n correct",
            "incorrect",
            "correct",
            "diff",
            "95% CI",
            "half-width",
            "bootstrap p",
            "Mann-Whitney p",
        ),
        rows,
    )


def _half(c: dict) -> str:
    low, high = c["diff_ci_low"], c["diff_ci_high"]
    return "-" if low is None or high is None else f"{(high - low) / 2:.3f}"


def _correlations(report: dict) -> list[str]:
    names = ("kl_pq", "kl_qp", "js", "l2", "cos_pq", "normalized_depth")
    cells: dict[tuple[str, str], dict[str, dict]] = {}
    for c in report["correlations"]:
        cells.setdefault((c["teacher"], c["method"]), {})[c["diagnostic"]] = c
    rows = []
    for (teacher, method), by_name in cells.items():
        row = [teacher, method]
        for name in names:
            c = by_name.get(name)
            row.append("-" if c is None else f"{_f(c['rho'], 2)} (p {_f(c['p_value'], 3, False)}, n {c['n']})")
        rows.append(row)
    return _table(("teacher", "method", *names), rows)


def _ranking(report: dict) -> list[str]:
    return _table(
        ("method", "rank", "teacher", "mean cos", "95% CI", "nodes"),
        (
            (
                e["method"],
                e["rank"],
                e["teacher"],
                _f(e["mean_cosine"]),
                _ci(e["mean_ci_low"], e["mean_ci_high"]),
                e["nodes"],
            )
            for e in report["ranking"]
        ),
    )


def findings(result: dict) -> list[str]:
    """One line per paper finding: holds / does not reproduce / inconclusive, with the numbers."""
    report = result["report"]
    lines = []
    for c in report["comparisons"]:
        low, diff = c["diff_ci_low"], c["diff"]
        if low is None or diff is None:
            verdict = "inconclusive (no interval)"
        elif low > 0:
            verdict = "holds"
        elif c["diff_ci_high"] is not None and c["diff_ci_high"] < 0:
            verdict = "does not reproduce (reversed)"
        else:
            verdict = "does not reproduce (interval contains 0)"
        lines.append(
            f"- Alignment higher on incorrect than on correct rollouts, {c['teacher']} / {c['method']}: {verdict}: "
            f"diff {_f(diff)} {_ci(low, c['diff_ci_high'])}, bootstrap p {_f(c['bootstrap_p'], 3, False)}, "
            f"n = {c['nodes_incorrect']} incorrect / {c['nodes_correct']} correct nodes."
        )
    lines += _context_findings(result["contexts"])
    lines += _correlation_findings(report)
    return lines


def _context_findings(rows: list[dict]) -> list[str]:
    by = {r["context"]: r for r in rows}
    base = by.get("no_context")
    out = []
    for name, r in by.items():
        if name == "no_context" or base is None or not r["samples"]:
            continue
        up = r["ci_low"] > base["ci_high"]
        down = r["ci_high"] < base["ci_low"]
        word = "raises" if up else "lowers" if down else "does not clearly change"
        here = f"{_f(r['accuracy'], signed=False)} {_ci(r['ci_low'], r['ci_high'])}"
        there = f"{_f(base['accuracy'], signed=False)} {_ci(base['ci_low'], base['ci_high'])}"
        out.append(f"- Context {name} {word} in-context accuracy: {here} vs {there} with no context.")
    return out


def _correlation_findings(report: dict) -> list[str]:
    expected = {"kl_pq": +1, "kl_qp": +1, "l2": +1, "js": +1, "cos_pq": -1}
    out = []
    for name, sign in expected.items():
        cs = [c for c in report["correlations"] if c["diagnostic"] == name and c["rho"] is not None]
        agree = sum(1 for c in cs if c["rho"] * sign > 0 and c["p_value"] is not None and c["p_value"] < 0.05)
        against = sum(1 for c in cs if c["rho"] * sign < 0 and c["p_value"] is not None and c["p_value"] < 0.05)
        rhos = ", ".join(_f(c["rho"], 2) for c in cs)
        want = "positive" if sign > 0 else "negative"
        out.append(
            f"- Paper: {name} correlates {want}ly with alignment. Here: significant in the paper's direction for "
            f"{agree} of {len(cs)} teacher x method pairs, against it for {against} (rho: {rhos})."
        )
    return out


def study_markdown(result: dict, command: str) -> str:
    """The whole study as Markdown."""
    lines = [
        "# gradalign study",
        "",
        f"Command: `{command}`",
        "",
        f"Wall time {result['seconds'] / 60:.1f} min (model load {result['load_seconds']:.0f} s), "
        f"{result['generated_tokens']:,} student tokens generated.",
        "",
    ]
    lines += ["## Tasks and screening", ""]
    lines += _table(
        ("task", "questions", "screened out", "kept", "base accuracy (kept)", "minutes"),
        (
            (
                t["name"],
                t["questions"],
                t["screened_out"],
                t["kept"],
                _f(t["base_accuracy"], signed=False),
                f"{t['seconds'] / 60:.1f}",
            )
            for t in result["tasks"]
        ),
    )
    report = result["report"]
    lines += ["## (a) In-context accuracy", ""] + _contexts(result["contexts"])
    lines += ["## (b) Alignment per teacher x method x split", ""] + _groups(report)
    lines += ["### Incorrect vs correct rollouts", ""] + _comparisons(report)
    lines += ["## (c) Spearman correlations of alignment", ""] + _correlations(report)
    lines += ["## (d) Teacher ranking", ""] + _ranking(report)
    lines += ["## The paper's findings on this model", ""] + findings(result) + [""]
    for task in result["tasks"]:
        lines += [f"## Task {task['name']}", "", "### Incorrect vs correct", ""] + _comparisons(task["report"])
        lines += ["### Ranking", ""] + _ranking(task["report"])
        lines += ["### In-context accuracy", ""] + _contexts(task["contexts"])
    return "\n".join(lines) + "\n"
