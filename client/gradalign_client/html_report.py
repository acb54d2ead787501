"""`gradalign report`: one self-contained, offline HTML page for a gradalign run.

The page is for a team choosing a teacher: the ranking with intervals, alignment on correct vs
incorrect rollouts (box plots with the report's Mann-Whitney test), mean cosine per teacher, the
correlation table, alignment against normalised depth, per-question means, and every rollout token
by token, coloured by the cosine at its analysed nodes, with each node's candidates a click away.

Everything is inlined: the CSS and the script (``report_assets/``), and the records and report as one
JSON blob. The page fetches nothing (its Content-Security-Policy forbids it) and works from a file.

Records are stored compactly and losslessly: what a node's records share across teachers and methods
(position, rollouts, candidates' p and visits, g*) is written once per node, what they share across
methods (q, diagnostics, demonstration sources) once per node and teacher, the rest per record; field
names once, values as arrays. A record that does not fit that layout (another schema) is kept whole.
:func:`records_from_html` reads the records back out of a page.

Standard library only, like the rest of the light client: it knows the record and report JSON, not
the engine that computed them, and draws no statistic of its own beyond means and quartiles.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "FORMAT",
    "build_html",
    "write_html",
    "encode_records",
    "decode_records",
    "data_from_html",
    "records_from_html",
    "read_records",
    "main",
]

FORMAT = "gradalign-report/1"

# Which record fields live where (see the module docstring). Every canonical record has all of them.
NODE_FIELDS = (
    "question_id",
    "tree_id",
    "rollout_index",
    "rollout_correct",
    "depth",
    "path_length",
    "normalized_depth",
    "sampled_token_id",
    "prefix_token_ids",
    "rollout_indices",
    "rollouts_correct",
    "ideal",
    "ideal_norm",
    "schema_version",
)
CANDIDATE_FIELDS = (
    "token_id",
    "token_text",
    "p",
    "p_renorm",
    "visits",
    "successes",
    "estimate",
    "ci_low",
    "ci_high",
    "sampled",
    "forced",
    "in_support",
)
TEACHER_FIELDS = ("teacher", "demo_source", "wrong_source", "teacher_advantage", "diagnostics")
TEACHER_CANDIDATE_FIELDS = ("q", "q_renorm")
RECORD_FIELDS = ("method", "distill", "cosine", "skip_reason", "distill_norm", "extra")
DIAGNOSTIC_FIELDS = ("kl_pq", "kl_qp", "js", "l2", "cos_pq", "student_entropy", "teacher_entropy")

_RECORD_KEYS = frozenset(NODE_FIELDS + TEACHER_FIELDS + RECORD_FIELDS + ("candidates",))
_CANDIDATE_KEYS = frozenset(CANDIDATE_FIELDS + TEACHER_CANDIDATE_FIELDS)
_DATA_ID = "gradalign-data"
_BLOB = re.compile(r'<script type="application/json" id="gradalign-data">(.*?)</script>', re.S)


# --------------------------------------------------------------------------------------------------
# the compact, lossless encoding of records
# --------------------------------------------------------------------------------------------------


def _fits(record: dict) -> bool:
    """Whether ``record`` has exactly the canonical schema's keys (else it is embedded whole)."""
    if set(record) != _RECORD_KEYS or not isinstance(record["candidates"], list):
        return False
    if any(not isinstance(c, dict) or set(c) != _CANDIDATE_KEYS for c in record["candidates"]):
        return False
    diagnostics = record["diagnostics"]
    return diagnostics is None or (isinstance(diagnostics, dict) and set(diagnostics) == set(DIAGNOSTIC_FIELDS))


class _Interner:
    """Rows deduplicated by equality: the index of the first equal row under the same key."""

    def __init__(self) -> None:
        self.rows: list[list] = []
        self._index: dict[Any, list[int]] = {}

    def add(self, key: Any, row: list) -> int:
        # A cheap key (where the node is) narrows the search and equality decides: comparing lists runs
        # at C speed, where serialising each row to compare it took seconds for 15,000 records.
        same = self._index.setdefault(key, [])
        for i in same:
            if self.rows[i] == row:
                return i
        same.append(len(self.rows))
        self.rows.append(row)
        return same[-1]


def encode_records(records: Iterable[dict]) -> dict[str, Any]:
    """The records (JSON data: canonical dicts) as field lists plus node, teacher and record rows."""
    nodes, teachers, out = _Interner(), _Interner(), []
    for record in records:
        if not _fits(record):
            out.append({"raw": record})
            continue
        cands = record["candidates"]
        node = [record[f] for f in NODE_FIELDS] + [[[c[f] for f in CANDIDATE_FIELDS] for c in cands]]
        node_index = nodes.add((record["tree_id"], record["rollout_index"], record["depth"]), node)
        diagnostics = record["diagnostics"]
        teacher = [node_index] + [record[f] for f in TEACHER_FIELDS[:-1]]
        teacher.append(None if diagnostics is None else [diagnostics[f] for f in DIAGNOSTIC_FIELDS])
        teacher.append([[c[f] for f in TEACHER_CANDIDATE_FIELDS] for c in cands])
        out.append([teachers.add((node_index, record["teacher"]), teacher)] + [record[f] for f in RECORD_FIELDS])
    return {
        "fields": {
            "node": list(NODE_FIELDS),
            "candidate": list(CANDIDATE_FIELDS),
            "teacher": list(TEACHER_FIELDS),
            "teacher_candidate": list(TEACHER_CANDIDATE_FIELDS),
            "record": list(RECORD_FIELDS),
            "diagnostics": list(DIAGNOSTIC_FIELDS),
        },
        "nodes": nodes.rows,
        "teachers": teachers.rows,
        "records": out,
    }


def decode_records(blob: dict[str, Any]) -> list[dict]:
    """Inverse of :func:`encode_records`: the canonical record dicts, in their original order."""
    f = blob["fields"]
    records = []
    for entry in blob["records"]:
        if isinstance(entry, dict):
            records.append(entry["raw"])
            continue
        teacher = blob["teachers"][entry[0]]
        node = blob["nodes"][teacher[0]]
        record = dict(zip(f["node"], node))
        record.update(zip(f["teacher"], teacher[1:]))
        record.update(zip(f["record"], entry[1:]))
        if record["diagnostics"] is not None:
            record["diagnostics"] = dict(zip(f["diagnostics"], record["diagnostics"]))
        record["candidates"] = [
            {**dict(zip(f["candidate"], c)), **dict(zip(f["teacher_candidate"], tc))}
            for c, tc in zip(node[len(f["node"])], teacher[len(f["teacher"]) + 1])
        ]
        records.append(record)
    return records


# --------------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------------


def _summary_parts(summary: Any) -> dict[str, Any]:
    """What the page shows of a summary: an analyze summary, a study.json, a report dict, or None."""
    if summary is None:
        return {}
    if hasattr(summary, "to_dict"):  # a Report object (engine or client)
        summary = {"report": summary.to_dict(), "receipt": getattr(summary, "receipt", None)}
    summary = _json_data(summary)
    if "ranking" in summary and "report" not in summary:  # a bare report
        summary = {"report": summary}
    parts = {key: summary.get(key) for key in ("report", "receipt", "trees", "contexts") if summary.get(key)}
    if summary.get("tasks"):  # a study: the per-task counts, not each task's whole report
        keep = ("name", "questions", "screened_out", "kept", "base_accuracy", "seconds")
        parts["tasks"] = [{k: t.get(k) for k in keep} for t in summary["tasks"]]
    return parts


def _asset(name: str, inlined: bool = True) -> str:
    text = resources.files(__package__).joinpath("report_assets", name).read_text(encoding="utf-8")
    # An inlined asset goes in verbatim: a closing tag inside would end its element early.
    if inlined and re.search(r"</(script|style)", text, re.I):
        raise ValueError(f"report_assets/{name} contains a closing script or style tag")
    return text


def _as_dicts(records: Iterable[Any]) -> list[dict]:
    """Record dicts from dicts or record objects (engine or client ``AlignmentRecord``)."""
    return [r.to_dict() if hasattr(r, "to_dict") else r for r in records]


def _json_data(value: Any) -> Any:
    """``value`` with NaN and infinities as None (the rule of ``gradalign_client.canonical``), at C speed."""
    return json.loads(json.dumps(value, allow_nan=True, default=str), parse_constant=lambda _: None)


def page_data(
    records: Iterable[Any], summary: Any = None, *, title: str = "gradalign report", token_texts=None
) -> dict:
    """The JSON blob the page embeds: the encoded records plus what it shows of the summary.

    ``token_texts`` (token id -> text) names prefix tokens that are no node's candidate: the records
    hold only the candidates' texts.
    """
    data = {"format": FORMAT, "title": title, **_summary_parts(summary), **encode_records(_as_dicts(records))}
    if token_texts:
        data["vocab"] = {str(int(k)): str(v) for k, v in token_texts.items()}
    return data


def _blob_json(records: list, summary: Any, title: str, token_texts) -> str:
    try:
        data = page_data(records, summary, title=title, token_texts=token_texts)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):  # NaN or a non-JSON value: records straight from Python objects
        data = page_data(_json_data(_as_dicts(records)), summary, title=title, token_texts=token_texts)
        return json.dumps(_json_data(data), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def build_html(
    records: list[dict], summary: dict | None = None, *, title: str = "gradalign report", token_texts=None
) -> str:
    """The whole report page as one HTML string (no external resource of any kind).

    ``records``: canonical record dicts (or record objects); ``summary``: an analyze summary, a
    study.json, a report dict or object, or None; ``token_texts``: optional token id -> text.
    """
    blob = _blob_json(list(records), summary, title, token_texts)
    # "<" escaped keeps any "</script>" or "<!--" in token texts from ending the data element.
    blob = blob.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    parts = {
        "TITLE": _escape(title),
        "CSS": _asset("report.css"),
        "PRELUDE": _asset("prelude.js"),
        "JS": _asset("report.js"),
        "DATA": blob,
    }
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda m: parts[m.group(1)], _asset("report.html", inlined=False))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def data_from_html(html: str) -> dict[str, Any]:
    """The JSON blob of a page written by :func:`build_html`."""
    match = _BLOB.search(html)
    if match is None:
        raise ValueError("not a gradalign report: no embedded data")
    return json.loads(match.group(1))


def records_from_html(html: str) -> list[dict]:
    """The records embedded in a report page, exactly as they were given to :func:`build_html`."""
    return decode_records(data_from_html(html))


def write_html(
    path: str | Path, records: Iterable[Any], summary: Any = None, title: str | None = None, *, token_texts=None
) -> Path:
    """Write the report page to ``path``; arguments as :func:`build_html`. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    title = title or f"gradalign report: {path.stem}"
    path.write_text(build_html(list(records), summary, title=title, token_texts=token_texts), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# inputs and the command line
# --------------------------------------------------------------------------------------------------


def read_records(path: str | Path) -> tuple[dict | None, list[dict]]:
    """A records JSONL file: its receipt (the first line, when it is one) and its records."""
    receipt, records = None, []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
            if n == 1 and set(item) == {"receipt"}:
                receipt = item["receipt"]
            else:
                records.append(item)
    return receipt, records


def _from_files(args) -> tuple[list[dict], dict | None, str]:
    receipt, records = read_records(args.records)
    summary = json.loads(Path(args.summary).read_text(encoding="utf-8")) if args.summary else None
    if receipt is not None and not (summary or {}).get("receipt"):
        summary = {**(summary or {}), "receipt": receipt}
    return records, summary, Path(args.records).name


def _from_study(args) -> tuple[list[dict], dict | None, str]:
    folder = Path(args.study)
    receipt, records = read_records(folder / "records.jsonl")
    study = folder / "study.json"
    summary = json.loads(study.read_text(encoding="utf-8")) if study.exists() else {"receipt": receipt}
    return records, summary, f"study {folder.resolve().name}"


def _names(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def _connect(args):
    """The Client the connection flags describe (the flags of ``gradalign vet``)."""
    from ._client import Client
    from ._core import read_token, tls_credentials

    credentials = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
        credentials = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    return Client(
        args.server, timeout=args.timeout, token=read_token(args.token, args.token_file), credentials=credentials
    )


def _from_server(args) -> tuple[list[dict], dict | None, str]:
    tree_ids, teachers, methods = _names(args.tree_ids), _names(args.teachers) or None, _names(args.methods) or None
    if not tree_ids:
        raise ValueError("--server needs --tree-ids A,B")
    with _connect(args) as client:
        stream = client.stream_alignments(tree_ids, teachers, methods, include_skipped=True, include_prefix_ids=True)
        records = [r.to_dict() for r in stream]
        report = client.score_teacher(tree_ids, teachers, methods)
    return records, {"report": report.to_dict(), "receipt": report.receipt}, f"{len(tree_ids)} trees on {args.server}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradalign report",
        description="Write one self-contained offline HTML report of a gradalign run (records and report).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--records", metavar="records.jsonl", help="records of 'gradalign analyze' or 'vet --out'")
    source.add_argument("--study", metavar="DIR", help="output folder of 'gradalign study' (records.jsonl, study.json)")
    source.add_argument(
        "--server", metavar="HOST:PORT", help="fetch the records and report of --tree-ids from a server"
    )
    parser.add_argument("--summary", metavar="summary.json", help="with --records: the summary of 'gradalign analyze'")
    parser.add_argument("--tree-ids", default=None, metavar="A,B", help="with --server: the trees to report")
    parser.add_argument("--teachers", default=None, metavar="A,B", help="with --server: teachers (default: all)")
    parser.add_argument("--methods", default=None, metavar="M,N", help="with --server: methods (default: the server's)")
    parser.add_argument("--out", required=True, metavar="report.html", help="the page to write")
    parser.add_argument("--title", default=None, help="the page's title (default: from the input)")
    conn = parser.add_argument_group("connection (with --server)")
    conn.add_argument("--token-file", default=None, metavar="FILE", help="bearer token file (or $GRADALIGN_TOKEN)")
    conn.add_argument("--token", default=None, help="bearer token itself (prefer --token-file)")
    conn.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's roots")
    conn.add_argument("--tls-ca", default=None, metavar="PEM", help="connect with TLS, trusting this CA")
    conn.add_argument("--tls-cert", default=None, metavar="PEM", help="client certificate for mutual TLS")
    conn.add_argument("--tls-key", default=None, metavar="PEM", help="key of --tls-cert")
    conn.add_argument("--timeout", type=float, default=600.0, help="deadline of each call in seconds (%(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``gradalign report``: exit 0 on success, 1 on unreadable input or a failed call, 2 unreachable."""
    from ._errors import GradalignError

    args = build_parser().parse_args(argv)
    if args.summary and not args.records:
        print("gradalign report: --summary goes with --records", file=sys.stderr)
        return 2
    load = _from_server if args.server else _from_study if args.study else _from_files
    try:
        records, summary, name = load(args)
        path = write_html(args.out, records, summary, args.title or f"gradalign report: {name}")
    except GradalignError as exc:
        print(f"gradalign report: {exc.code}: {exc.details.splitlines()[0] if exc.details else ''}", file=sys.stderr)
        return 2 if exc.unreachable else 1
    except (OSError, ValueError) as exc:
        print(f"gradalign report: {exc}", file=sys.stderr)
        return 1
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({len(records)} records, {size:.2f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
