"""``gradalign weights``: per-token masks or weights for selective distillation, from alignment records.

Role: read a records JSONL (``analyze --out``, ``vet --out``, ``export``, a study's records.jsonl),
keep one teacher x method, and write one row per (question_id, rollout, position) that an analysed
node covers (optionally every position of every rollout, ``dense``) with the weight a trainer
multiplies that token's distillation loss by: a mask ``cosine >= threshold`` or a monotone map of the
cosine (or of the node's teacher advantage). JSONL through :func:`.canonical.json_line`, or Parquet
with the same columns and explicit types. The semantics and the schema: ``docs/training_export.md``.

What it does not know: the engine, torch, numpy or any trainer (pure standard library; pyarrow is
imported only for Parquet); the rollouts' tokens (records carry node positions and the token sampled
there, not whole completions: the trainer brings its sequences and joins on question, rollout and
position); and whether a weight helps training (the records measure one step's direction, not a run).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .names import METHODS, canonical_method_name
from .weights_files import (
    COLUMNS,
    WeightsError,
    _pyarrow,
    read_records,
    read_weights,
    select,
    weight_map,
    write_weights,
)

__all__ = [
    "COLUMNS",
    "METHODS",
    "WeightOptions",
    "WeightsError",
    "canonical_method",
    "read_records",
    "select",
    "derive_rows",
    "node_weight",
    "rollout_lengths",
    "export_weights",
    "write_weights",
    "read_weights",
    "weight_map",
    "main",
]

MODES = ("mask", "weight")
SCORES = ("cosine", "advantage")
SOURCES = ("node", "skipped", "default")
FORMAT_VERSION = 1
EXIT_OK, EXIT_BAD_INPUT = 0, 2


def canonical_method(name: str) -> str:
    """A method name or alias as the engine spells it; WeightsError for an unknown one."""
    key = canonical_method_name(name)  # the engine's list (gradalign_client.names), without the engine
    if key is None:
        raise WeightsError("method", name, f"unknown method; choose from {', '.join(METHODS)}")
    return key


def _number(name: str, value: Any, lo: float, hi: float, *, open_hi: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not lo <= value <= hi or (open_hi and value == hi):
        raise WeightsError(name, value, f"must be a number in [{lo:g}, {hi:g}{')' if open_hi else ']'}")
    return float(value)


@dataclass(frozen=True)
class WeightOptions:
    """How records become per-token weights (docs/training_export.md, "How weights are derived")."""

    teacher: str | None = None  # None: the only teacher in the records
    method: str | None = None  # name or alias; None: the only method in the records
    mode: str = "mask"  # "mask": 1 where score >= threshold else 0; "weight": clip((s - threshold) / (1 - threshold))
    score: str = "cosine"  # "cosine": cos(g*, d); "advantage": the node's teacher advantage sum_j (q~_j - p~_j) v_j
    threshold: float = 0.0
    default: float = 1.0  # weight of tokens that are not analysed nodes
    skipped: float | None = None  # weight of analysed nodes without a score (None: the default weight)
    dense: bool = False  # also emit "default" rows for every other position of each rollout of known length
    trees: tuple[str, ...] = ()  # keep only these tree ids (empty: all)

    def __post_init__(self) -> None:
        for name in ("teacher", "method"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise WeightsError(name, value, "must be a non-empty string (or None: the only one in the records)")
        if self.method is not None:
            object.__setattr__(self, "method", canonical_method(self.method))
        if self.mode not in MODES:
            raise WeightsError("mode", self.mode, f"must be one of {', '.join(MODES)}")
        if self.score not in SCORES:
            raise WeightsError("score", self.score, f"must be one of {', '.join(SCORES)}")
        object.__setattr__(
            self, "threshold", _number("threshold", self.threshold, -1, 1, open_hi=self.mode == "weight")
        )
        object.__setattr__(self, "default", _number("default", self.default, 0, 1))
        if self.skipped is not None:
            object.__setattr__(self, "skipped", _number("skipped", self.skipped, 0, 1))
        if not isinstance(self.dense, bool):
            raise WeightsError("dense", self.dense, "must be true or false")
        trees = (self.trees,) if isinstance(self.trees, str) else self.trees
        if not all(isinstance(t, str) and t for t in trees):
            raise WeightsError("trees", self.trees, "must be a list of tree ids")
        object.__setattr__(self, "trees", tuple(trees))

    @property
    def skipped_weight(self) -> float:
        return self.default if self.skipped is None else self.skipped


# ---------------------------------------------------------------------------------------------- reading records


def _rollouts(record: dict) -> list[int]:
    """The base rollouts through the node (records of older schemas list only the representative)."""
    return [int(r) for r in record.get("rollout_indices") or [record["rollout_index"]]]


# ---------------------------------------------------------------------------------------------- the derivation
def node_weight(score: float | None, options: WeightOptions) -> float | None:
    """The weight of a node whose score is ``score`` (None when the node has no score: skipped)."""
    if score is None or not math.isfinite(score):
        return None
    if options.mode == "mask":
        return 1.0 if score >= options.threshold else 0.0
    return min(1.0, max(0.0, (score - options.threshold) / (1.0 - options.threshold)))


def _score(record: dict, options: WeightOptions) -> float | None:
    """The node's score, None when the record is skipped or lacks it."""
    if record.get("skip_reason") is not None:
        return None
    value = record.get("cosine") if options.score == "cosine" else record.get("teacher_advantage")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _token_id(record: dict, rollout: int) -> int | None:
    """The token ``rollout`` sampled at the node, when the record says (representative, or one sampled token)."""
    if rollout == record["rollout_index"] and record.get("sampled_token_id") is not None:
        return int(record["sampled_token_id"])
    sampled = {c["token_id"] for c in record.get("candidates") or () if c.get("sampled")}
    return int(next(iter(sampled))) if len(sampled) == 1 else None


def rollout_lengths(records: Sequence[dict]) -> dict[tuple[str, int], int]:
    """Completion length T_r of each (tree_id, rollout) the records determine.

    A record gives its representative's length (``path_length``); a shared node at depth t > 0 whose
    rollouts but one have known lengths gives the last one's from ``normalized_depth`` (the mean of
    t / T_r over its rollouts), accepted only when it solves to an integer T > t.
    """
    known: dict[tuple[str, int], int] = {}
    for r in records:
        if isinstance(r.get("path_length"), int):
            known.setdefault((r["tree_id"], int(r["rollout_index"])), r["path_length"])
    shared = {
        (r["tree_id"], int(r["depth"]), tuple(_rollouts(r))): r.get("normalized_depth")
        for r in records
        if int(r["depth"]) > 0 and len(_rollouts(r)) > 1 and isinstance(r.get("normalized_depth"), (int, float))
    }
    progress = True
    while progress:
        progress = False
        for (tree, t, through), mean in list(shared.items()):
            unknown = [x for x in through if (tree, x) not in known]
            if len(unknown) == 1:
                rest = mean * len(through) - sum(t / known[(tree, x)] for x in through if (tree, x) in known)
                length = t / rest if rest > 0 else math.inf
                if math.isfinite(length) and abs(length - round(length)) < 1e-3 and round(length) > t:
                    known[(tree, unknown[0])] = round(length)
                    progress = True
            if len(unknown) <= 1:
                del shared[(tree, t, through)]
    return known


def _outcomes(records: Sequence[dict]) -> dict[tuple[str, int], bool]:
    """Verdict of each (tree_id, rollout) that some node with a single outcome lies on."""
    out: dict[tuple[str, int], bool] = {}
    for r in records:
        if isinstance(r.get("rollout_correct"), bool):
            for x in _rollouts(r):
                out[(r["tree_id"], x)] = r["rollout_correct"]
    return out


def _row(**values: Any) -> dict[str, Any]:
    return {name: values.get(name) for name, _, _ in COLUMNS}


def _node_rows(record: dict, options: WeightOptions, outcomes: dict) -> list[dict]:
    """One row per rollout through the node: the same weight, cosine and advantage on each."""
    weight = node_weight(_score(record, options), options)
    cosine, advantage = record.get("cosine"), record.get("teacher_advantage")
    through = _rollouts(record)
    return [
        _row(
            question_id=record["question_id"],
            tree_id=record["tree_id"],
            rollout=r,
            position=int(record["depth"]),
            token_id=_token_id(record, r),
            weight=options.skipped_weight if weight is None else weight,
            cosine=float(cosine) if isinstance(cosine, (int, float)) and math.isfinite(cosine) else None,
            advantage=float(advantage) if isinstance(advantage, (int, float)) and math.isfinite(advantage) else None,
            teacher=record["teacher"],
            method=record["method"],
            source="skipped" if weight is None else "node",
            skip_reason=record.get("skip_reason"),
            node_rollouts=len(through),
            rollout_correct=outcomes.get((record["tree_id"], r)),
        )
        for r in through
    ]


def _default_rows(covered: dict, lengths: dict, questions: dict, outcomes: dict, **common: Any) -> list[dict]:
    """Rows of weight ``common["weight"]`` for every position of a known-length rollout that no node covers."""
    rows = []
    for (tree, rollout), length in sorted(lengths.items()):
        qid = questions.get(tree)
        for position in range(length) if qid is not None else ():
            if (qid, rollout, position) not in covered:
                verdict = outcomes.get((tree, rollout))
                rows.append(
                    _row(
                        question_id=qid,
                        tree_id=tree,
                        rollout=rollout,
                        position=position,
                        rollout_correct=verdict,
                        **common,
                    )
                )
    return rows


def derive_rows(records: Sequence[dict], options: WeightOptions) -> tuple[list[dict], dict[str, Any]]:
    """(rows sorted by question, rollout, position; facts for the header) of the chosen teacher x method.

    ``records`` may hold every teacher and method: the others only help recover rollout lengths and
    verdicts. WeightsError when the selection is ambiguous or two records claim one token.
    """
    teacher, method, chosen = select(records, options)
    trees = {r["tree_id"] for r in chosen}
    same_trees = [r for r in records if r["tree_id"] in trees]
    outcomes = _outcomes(same_trees)
    covered: dict[tuple[str, int, int], dict] = {}
    for record in chosen:
        for row in _node_rows(record, options, outcomes):
            key = (row["question_id"], row["rollout"], row["position"])
            if key in covered:
                raise WeightsError(
                    "records",
                    f"question {key[0]}, rollout {key[1]}, position {key[2]}",
                    f"two {teacher} x {method} records cover this token (a file holding two analyses of one tree?)",
                )
            covered[key] = row
    rows = list(covered.values())
    unknown = None  # counted only for dense output
    if options.dense:
        lengths = rollout_lengths(same_trees)
        questions = {r["tree_id"]: r["question_id"] for r in chosen}
        rows += _default_rows(
            covered,
            lengths,
            questions,
            outcomes,
            weight=options.default,
            teacher=teacher,
            method=method,
            source="default",
        )
        unknown = len({(r["tree_id"], r["rollout"]) for r in rows} - set(lengths))
    rows.sort(key=lambda row: (row["question_id"], row["rollout"], row["position"]))
    facts = {"teacher": teacher, "method": method, "records": len(chosen), "rollouts_without_length": unknown}
    return rows, facts


# ---------------------------------------------------------------------------------------------- the files
def _header(options: WeightOptions, facts: dict, rows: Sequence[dict], receipt: dict | None, digest: str) -> dict:
    student = (receipt or {}).get("student") or {}
    return {
        "format_version": FORMAT_VERSION,
        "teacher": facts["teacher"],
        "method": facts["method"],
        "mode": options.mode,
        "score": options.score,
        "threshold": options.threshold,
        "default": options.default,
        "skipped": options.skipped_weight,
        "dense": options.dense,
        "trees": sorted({r["tree_id"] for r in rows}),
        "questions": len({r["question_id"] for r in rows}),
        "records": facts["records"],
        "rows": len(rows),
        "rows_by_source": {s: sum(r["source"] == s for r in rows) for s in SOURCES},
        "rollouts_without_length": facts["rollouts_without_length"],
        "columns": [{"name": n, "type": t, "nullable": null} for n, t, null in COLUMNS],
        "source": {
            "records_sha256": digest,
            "gradalign": (receipt or {}).get("gradalign"),
            "student": {k: student.get(k) for k in ("name", "model_hash", "tokenizer_hash")} if student else None,
        },
    }


def export_weights(records_path: str | Path, out_path: str | Path, options: WeightOptions, fmt: str = "jsonl") -> dict:
    """Read records, derive the rows, write them; returns the header written."""
    if fmt == "parquet":
        _pyarrow()  # fail before the work
    receipt, records, digest = read_records(records_path)
    if not records:
        raise WeightsError("records", str(records_path), "holds no alignment record")
    rows, facts = derive_rows(records, options)
    header = _header(options, facts, rows, receipt, digest)
    write_weights(out_path, header, rows, fmt)
    return header


# ---------------------------------------------------------------------------------------------- the command
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gradalign weights",
        description="Per-token masks or weights for selective distillation from gradalign records "
        "(docs/training_export.md).",
    )
    p.add_argument("records", metavar="RECORDS.jsonl", help="records of analyze --out, vet --out, export or study")
    p.add_argument("--out", required=True, metavar="FILE", help="weights file (.jsonl, or .parquet)")
    p.add_argument("--format", choices=("jsonl", "parquet"), default=None, help="default: from --out's suffix")
    p.add_argument("--teacher", default=None, help="teacher to export (default: the only one in the records)")
    p.add_argument("--method", default=None, help="forward_kl, reverse_kl, jsd, single_sample, minillm or an alias")
    p.add_argument("--mode", choices=MODES, default="mask", help="mask: 0/1; weight: clip((s-thr)/(1-thr), 0, 1)")
    p.add_argument("--score", choices=SCORES, default="cosine", help="the node's cosine or its teacher advantage")
    p.add_argument("--threshold", type=float, default=0.0, help="default %(default)s")
    p.add_argument("--default", type=float, default=1.0, help="weight of tokens that are no analysed node (1.0)")
    p.add_argument("--skipped", type=float, default=None, help="weight of skipped nodes (default: --default)")
    p.add_argument("--dense", action="store_true", help="also write a 'default' row for every other token")
    p.add_argument("--tree", default=None, metavar="ID[,ID]", help="keep only these trees")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gradalign weights``: 0 when written, 2 for a bad option, name or file."""
    args = build_parser().parse_args(argv)
    fmt = args.format or ("parquet" if Path(args.out).suffix.lower() in (".parquet", ".pq") else "jsonl")
    try:
        options = WeightOptions(
            teacher=args.teacher,
            method=args.method,
            mode=args.mode,
            score=args.score,
            threshold=args.threshold,
            default=args.default,
            skipped=args.skipped,
            dense=args.dense,
            trees=tuple(t.strip() for t in (args.tree or "").split(",") if t.strip()),
        )
        header = export_weights(args.records, args.out, options, fmt)
    except WeightsError as exc:
        print(f"gradalign weights: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    counts = ", ".join(f"{n} {s}" for s, n in header["rows_by_source"].items() if n)
    print(
        f"{header['rows']} rows ({counts or 'none'}) for {header['questions']} question(s), "
        f"teacher {header['teacher']}, {header['method']}, {header['mode']} of {header['score']}, "
        f"written to {args.out}",
        file=sys.stderr,
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
