"""The files of `gradalign weights`: reading records JSONL, writing and reading weights as JSONL or Parquet.

The schema (``COLUMNS``, the header under ``HEADER_KEY``) is documented in docs/training_export.md;
:mod:`.training_weights` derives the rows. Standard library only, pyarrow imported where Parquet is
asked for. Knows nothing of how a weight is computed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .canonical import json_line

__all__ = [
    "select",
    "COLUMNS",
    "HEADER_KEY",
    "PARQUET_HINT",
    "PARQUET_METADATA_KEY",
    "WeightsError",
    "read_records",
    "read_weights",
    "weight_map",
    "write_weights",
]

HEADER_KEY = "weights"  # JSONL: the first line is {"weights": header}


PARQUET_METADATA_KEY = b"gradalign.weights"  # Parquet: the header, JSON, in the schema's metadata


PARQUET_HINT = "pip install 'gradalign[parquet]'"


#: (name, type, nullable): the columns of every row, in order; types as Parquet stores them.
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("question_id", "string", False),
    ("tree_id", "string", False),
    ("rollout", "int32", False),
    ("position", "int32", False),
    ("token_id", "int32", True),
    ("weight", "float64", False),
    ("cosine", "float64", True),
    ("advantage", "float64", True),
    ("teacher", "string", False),
    ("method", "string", False),
    ("source", "string", False),
    ("skip_reason", "string", True),
    ("node_rollouts", "int32", True),
    ("rollout_correct", "bool", True),
)


_PY_TYPES = {"string": str, "int32": int, "float64": float, "bool": bool}


class WeightsError(ValueError):
    """A bad option, a bad input file or a selection the records cannot answer; names what is wrong."""

    def __init__(self, name: str, value: Any, message: str):
        self.name, self.value = name, value
        super().__init__(f"{name}={value!r}: {message}")


_REQUIRED = ("question_id", "tree_id", "teacher", "method", "depth", "rollout_index")


_KEPT = _REQUIRED + (
    "rollout_indices",
    "rollout_correct",
    "path_length",
    "normalized_depth",
    "cosine",
    "skip_reason",
    "teacher_advantage",
    "sampled_token_id",
)


def _slim(record: dict) -> dict:
    """The fields the export reads (candidates reduced to the sampled ones): a large file fits in memory."""
    out = {k: record[k] for k in _KEPT if k in record}
    out["candidates"] = [
        {"token_id": c.get("token_id"), "sampled": True} for c in record.get("candidates") or () if c.get("sampled")
    ]
    return out


def _parse(line: bytes, where: str) -> dict:
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise WeightsError("records", where, "not UTF-8 text") from None
    except ValueError as exc:
        raise WeightsError("records", where, f"not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise WeightsError("records", where, "each line must be a JSON object")
    return obj


def read_records(path: str | Path) -> tuple[dict | None, list[dict], str]:
    """(receipt or None, records, sha256 of the file) of a records JSONL, read line by line.

    Records keep only the fields the export reads. WeightsError names the file and line of a bad one.
    """
    path, digest = Path(path), hashlib.sha256()
    receipt, records = None, []
    try:
        with path.open("rb") as fh:
            for number, line in enumerate(fh, 1):
                digest.update(line)
                if not line.strip():
                    continue
                obj = _parse(line, f"{path}:{number}")
                if set(obj) == {"receipt"}:
                    receipt = receipt or obj["receipt"]
                    continue
                missing = [k for k in _REQUIRED if k not in obj]
                if missing:
                    raise WeightsError(
                        "records", f"{path}:{number}", f"not an alignment record (no {', '.join(missing)})"
                    )
                records.append(_slim(obj))
    except OSError as exc:
        raise WeightsError("records", str(path), f"cannot read: {exc.strerror or exc}") from None
    return receipt, records, digest.hexdigest()


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise WeightsError("format", "parquet", f"needs pyarrow, which is not installed: {PARQUET_HINT}") from None
    return pyarrow


def _arrow_schema(pa, header: dict):
    types = {"string": pa.string(), "int32": pa.int32(), "float64": pa.float64(), "bool": pa.bool_()}
    fields = [pa.field(name, types[kind], nullable=null) for name, kind, null in COLUMNS]
    return pa.schema(fields, metadata={PARQUET_METADATA_KEY: json_line(header).encode()})


def write_weights(path: str | Path, header: dict, rows: Sequence[dict], fmt: str = "jsonl") -> None:
    """Write ``rows`` with ``header``: JSONL (header line, then one canonical line per row) or Parquet."""
    path = Path(path)
    if fmt == "parquet":
        pa = _pyarrow()
        table = pa.Table.from_pylist(list(rows), schema=_arrow_schema(pa, header))
        path.parent.mkdir(parents=True, exist_ok=True)
        pa.parquet.write_table(table, path)
        return
    if fmt != "jsonl":
        raise WeightsError("format", fmt, "must be jsonl or parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        fh.write(json_line({HEADER_KEY: header}) + "\n")
        for row in rows:
            fh.write(json_line(row) + "\n")


def read_weights(path: str | Path) -> tuple[dict, list[dict]]:
    """(header, rows) of a weights file, JSONL or Parquet (told apart by its first bytes)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise WeightsError("weights", str(path), f"cannot read: {exc.strerror or exc}") from None
    if magic == b"PAR1":
        pa = _pyarrow()
        table = pa.parquet.read_table(path)
        header = json.loads((table.schema.metadata or {}).get(PARQUET_METADATA_KEY, b"{}"))
        return header, table.to_pylist()
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        first = json.loads(lines[0]) if lines else None
    except ValueError:
        first = None
    if not isinstance(first, dict) or HEADER_KEY not in first:
        raise WeightsError("weights", str(path), f"not a weights file (the first line has no {HEADER_KEY!r})")
    return first[HEADER_KEY], [json.loads(line) for line in lines[1:] if line.strip()]


def weight_map(rows: Iterable[dict]) -> dict[tuple[str, int], dict[int, float]]:
    """{(question_id, rollout): {position: weight}}; positions absent here take the header's ``default``."""
    out: dict[tuple[str, int], dict[int, float]] = {}
    for row in rows:
        out.setdefault((row["question_id"], int(row["rollout"])), {})[int(row["position"])] = float(row["weight"])
    return out


def _choose(name: str, wanted: str | None, present: Iterable[str], where: str) -> str:
    present = sorted(set(present))
    if wanted is None:
        if not present:
            raise WeightsError(name, None, f"{where} hold no {name}")
        if len(present) > 1:
            raise WeightsError(
                name, None, f"{where} hold {len(present)} ({', '.join(present)}): name one with --{name}"
            )
        return present[0]
    if wanted not in present:
        raise WeightsError(
            name, wanted, f"no records of this {name} in {where}; present: {', '.join(present) or 'none'}"
        )
    return wanted


def select(records: Sequence[dict], options) -> tuple[str, str, list[dict]]:
    """(teacher, method, records of that teacher x method in the chosen trees), checked for one tree per question."""
    pool = [r for r in records if not options.trees or r["tree_id"] in options.trees]
    if options.trees and not pool:
        raise WeightsError("trees", list(options.trees), "no record belongs to these trees")
    teacher = _choose("teacher", options.teacher, (r["teacher"] for r in pool), "the records")
    pool = [r for r in pool if r["teacher"] == teacher]
    method = _choose("method", options.method, (r["method"] for r in pool), f"teacher {teacher!r}'s records")
    chosen = [r for r in pool if r["method"] == method]
    trees: dict[str, set[str]] = {}
    for r in chosen:
        trees.setdefault(r["question_id"], set()).add(r["tree_id"])
    for qid, ids in sorted(trees.items()):
        if len(ids) > 1:
            raise WeightsError(
                "trees", sorted(ids), f"question {qid!r} has records from {len(ids)} trees: choose one with --tree"
            )
    return teacher, method, chosen
