"""`gradalign analyze`: the whole method in-process, no server, for notebooks and scripts.

Reads a TOML run config and a JSONL dataset, builds one tree per question, scores every configured
teacher and method, and writes per-node records (JSONL; the first line is the receipt) and a summary
(receipt, tree summaries, the aggregate report). Knows files and argparse; the work is the Engine's.

``--executor ray`` shards the questions over Ray actors (``ray_executor``), each building and scoring
whole questions with its own resident models; records are written in question order, so the output
is the one an in-process run writes for the same settings and seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from gradalign_client.canonical import json_line, json_safe

__all__ = ["analyze_main", "build_parser", "write_records"]


def write_records(path: Path, receipt: dict, records) -> None:
    """JSONL of records: the receipt first, then one canonical line per record (``gradalign_client.canonical``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        fh.write(json_line({"receipt": receipt}) + "\n")
        for record in records:
            fh.write(json_line(record if isinstance(record, dict) else record.to_dict()) + "\n")


def build_parser(prog: str = "gradalign analyze") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        required=True,
        help="TOML run config: [student], [[teachers]], [sampling], [prompt], [rollouts], [analysis], seed.",
    )
    parser.add_argument(
        "--dataset", required=True, help="JSONL dataset (id, question, answer, verifier, optional solution/choices)."
    )
    parser.add_argument("--limit", type=int, default=None, help="Analyse only the first N questions.")
    parser.add_argument(
        "--out", default="gradalign-out/records.jsonl", help="Per-node records, JSONL (first line: the receipt)."
    )
    parser.add_argument(
        "--summary",
        default="gradalign-out/summary.json",
        help="Receipt, tree summaries, the aggregate report and the cost (estimated and spent), JSON.",
    )
    parser.add_argument("--html", default=None, metavar="FILE", help="Also write the HTML report (gradalign report).")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="Print the expected generated and teacher-scored tokens and time (a short calibration), then stop.",
    )
    parser.add_argument(
        "--teachers", default=None, help="Comma-separated teacher names to score (default: all configured)."
    )
    parser.add_argument(
        "--methods", default=None, help="Comma-separated methods (default: the config's analysis.methods)."
    )
    parser.add_argument("--seed", type=int, default=None, help="Override the config's seed.")
    parser.add_argument("--quiet", action="store_true", help="No progress on stderr.")
    from .ray_executor import add_executor_arguments

    add_executor_arguments(parser)
    return parser


def analyze_main(argv: list[str] | None = None) -> int:
    from .errors import GradalignError

    args = build_parser().parse_args(argv)
    try:
        return _analyze(args)
    except GradalignError as exc:
        print(f"gradalign analyze: error: {exc}", file=sys.stderr)
        return 2


def _checked_inputs(args):
    """Config, questions, teachers and methods, all checked before any model is loaded (cheap imports only)."""
    from .config import canonical_method, load_run_config
    from .data import load_questions
    from .errors import ConfigError

    config = load_run_config(args.config)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit", args.limit, "must be >= 1")
    questions = load_questions(args.dataset, limit=args.limit)
    if not config.teachers:
        raise ConfigError("teachers", [], "the config names no teacher ([[teachers]] tables)")
    known = [t.name for t in config.teachers]
    teachers = [t.strip() for t in args.teachers.split(",")] if args.teachers else known
    for name in teachers:
        if name not in known:
            raise ConfigError("--teachers", name, f"no such teacher in {args.config}; configured: {', '.join(known)}")
    methods = [canonical_method(m) for m in args.methods.split(",")] if args.methods else list(config.analysis.methods)
    return config, questions, teachers, methods


def _quiet_libraries() -> None:
    """--quiet: no loading bars from transformers either."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _analyze(args) -> int:
    config, questions, teachers, methods = _checked_inputs(args)
    if args.quiet:
        _quiet_libraries()
    keep_prefix_ids = config.analysis.include_prefix_ids
    config = _with_prefix_ids_for_html(config, args.html)
    from .aggregate import build_report
    from .cost import compare
    from .ray_executor import executor_from_args

    executor = executor_from_args(args)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    started = time.perf_counter()
    engine = _open_engine(config, executor)
    say(_loaded_line(engine, executor, time.perf_counter() - started))
    expected = engine.estimate(questions, teachers=teachers)
    for line in expected.lines() if args.dry_run or not args.quiet else ():
        print(line, file=sys.stdout if args.dry_run else sys.stderr, flush=True)
    if args.dry_run:
        engine.close()
        return 0
    receipt = _as_written(engine.receipt(), keep_prefix_ids)
    receipt["dataset"] = str(args.dataset)
    run_started, generated_before = time.perf_counter(), engine.student.counters.snapshot()["generated_tokens"]
    records, summaries = _run_questions(
        engine, questions, teachers, methods, receipt, Path(args.out), args.quiet, keep_prefix_ids
    )
    spent = {
        "generated_tokens": engine.student.counters.snapshot()["generated_tokens"] - generated_before,
        "seconds": round(time.perf_counter() - run_started, 2),
    }
    report = build_report(records, config.analysis, seed=config.seed, trees=summaries)
    summary = {
        "receipt": receipt,
        "trees": summaries,
        "report": report.to_dict(),
        "cost": {"estimate": expected.to_dict(), "spent": spent},
        "seconds": round(time.perf_counter() - started, 2),
    }
    Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
    Path(args.summary).write_text(json.dumps(json_safe(summary), indent=2))
    if args.html:
        tokenizer = getattr(engine.student, "tokenizer", None)  # none on a Ray driver: loaded from the files
        write_report(args.html, records, summary, f"gradalign analyze: {Path(args.dataset).name}", config, tokenizer)
    say(format_ranking(report))
    say(compare(expected, spent["generated_tokens"], spent["seconds"]))
    say(
        f"wrote {len(records)} records to {args.out} and the summary to {args.summary}"
        + (f", {args.html}" if args.html else "")
    )
    engine.close()
    return 0


def _open_engine(config, executor):
    """The local Engine, or with ``executor`` the Ray actors' RemoteEngine (no model in this process)."""
    if executor is None:
        from .pipeline import Engine

        return Engine(config)
    from .ray_executor import RemoteEngine

    return RemoteEngine(config, executor)


def _loaded_line(engine, executor, seconds: float) -> str:
    student, *others = engine.list_models()
    where = f" on {executor.workers} Ray worker(s)" if executor is not None else ""
    return (
        f"loaded student {student.name} ({student.backend}, {student.dtype}) "
        f"and {len(others)} teacher(s){where} in {seconds:.1f}s"
    )


def _questions_done(engine, questions, teachers, methods, on_progress):
    """(question, tree, records) in question order: one after the other in-process, sharded over Ray workers.

    ``on_progress(question id, stage, done, total)`` runs on this thread either way.
    """

    def one(worker, question, cancel=None, report=None):
        progress = report or (lambda stage, done, total: on_progress(question.id, stage, done, total))
        tree = worker.build_tree(question, cancel=cancel, progress=progress)
        return tree, worker.score_tree(tree, teachers, methods, cancel=cancel, progress=progress)

    if not hasattr(engine, "worker_handles"):
        for question in questions:
            yield (question, *one(engine, question))
        return
    from .ray_executor import map_in_order

    def retried(index, attempt, error):
        print(f"gradalign analyze: {questions[index].id}: worker lost, retrying ({attempt}): {error}", file=sys.stderr)

    shown = lambda i, event: on_progress(questions[i].id, *event)  # noqa: E731
    for index, result in map_in_order(engine.worker_handles(), questions, one, on_progress=shown, on_retry=retried):
        yield (questions[index], *result)


def _with_prefix_ids_for_html(config, html: str | None):
    """The run config, asking for prefix token ids when an HTML report will show each node in context."""
    if not html or config.analysis.include_prefix_ids:
        return config
    return dataclasses.replace(config, analysis=dataclasses.replace(config.analysis, include_prefix_ids=True))


def _as_written(receipt: dict, keep_prefix_ids: bool) -> dict:
    """The receipt with include_prefix_ids as the JSONL has it (not as asked for the report)."""
    config = receipt.get("config")
    if isinstance(config, dict) and "include_prefix_ids" in config.get("analysis", {}):
        analysis = {**config["analysis"], "include_prefix_ids": keep_prefix_ids}
        receipt = {**receipt, "config": {**config, "analysis": analysis}}
    return receipt


def _jsonl_record(record, keep_prefix_ids: bool) -> dict:
    row = record.to_dict()
    if not keep_prefix_ids:
        row["prefix_token_ids"] = None  # asked for the report only: the JSONL stays as configured
    return row


def write_report(path, records, summary: dict, title: str, config, tokenizer=None) -> None:
    """The HTML report of ``records`` (gradalign report), their prefixes decoded by the student's tokenizer."""
    from gradalign_client.html_report import write_html

    texts = _token_texts(config, records, tokenizer)
    write_html(path, [r.to_dict() for r in records], json_safe(summary), title=title, token_texts=texts)


def _token_texts(config, records, tokenizer=None) -> dict[int, str] | None:
    """Token id -> text for the prefix tokens in ``records`` (the report's node context).

    ``tokenizer``: the loaded student's; else it is loaded from the student's files. None when that
    fails too (a Ray driver without the model files): the report then shows no prefix text.
    """
    ids = sorted({t for r in records for t in (r.prefix_token_ids or ())})
    if not ids:
        return None
    if tokenizer is not None:
        return {t: tokenizer.decode([t]) for t in ids}
    try:
        from transformers import AutoTokenizer

        from .models import resolve_model

        resolved = resolve_model(config.student.model)
        kwargs = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        print(
            f"gradalign: the report shows no prefix text: the student's tokenizer did not load ({exc})", file=sys.stderr
        )
        return None
    return {t: tokenizer.decode([t]) for t in ids}


def _run_questions(
    engine, questions, teachers, methods, receipt, out_path: Path, quiet: bool, keep_prefix_ids: bool = True
):
    """Build and score each question, writing records as they come (in question order); progress on stderr."""
    from gradalign_client.progress import ProgressLine

    bar = ProgressLine(len(questions), enabled=not quiet)
    counters = engine.student.counters
    records, summaries = [], []

    def progress(qid, stage, done, total):
        bar.stage(qid, stage, done, total, counters.snapshot()["generated_tokens"])

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8") as out:
        out.write(json_line({"receipt": receipt}) + "\n")
        for question, tree, recs in _questions_done(engine, questions, teachers, methods, progress):
            for r in recs:
                out.write(json_line(_jsonl_record(r, keep_prefix_ids)) + "\n")
            records.extend(recs)
            summaries.append(dataclasses.asdict(tree.summary))
            s = tree.summary
            bar.finish_unit(
                f"{question.id}: {s.correct}/{s.rollouts} correct, {s.nodes_analysed} nodes, {s.continuations} "
                f"continuations, {s.seconds:.1f}s",
                counters.snapshot()["generated_tokens"],
            )
    bar.close()
    return records, summaries


def format_ranking(report) -> str:
    lines = ["rank  teacher               method          mean cos   95% CI              nodes"]
    for e in report.ranking:
        lo = (
            "nan"
            if e.mean_ci_low is None or (isinstance(e.mean_ci_low, float) and math.isnan(e.mean_ci_low))
            else f"{e.mean_ci_low:+.3f}"
        )
        hi = (
            "nan"
            if e.mean_ci_high is None or (isinstance(e.mean_ci_high, float) and math.isnan(e.mean_ci_high))
            else f"{e.mean_ci_high:+.3f}"
        )
        mean = (
            "nan"
            if e.mean_cosine is None or (isinstance(e.mean_cosine, float) and math.isnan(e.mean_cosine))
            else f"{e.mean_cosine:+.3f}"
        )
        lines.append(f"{e.rank:<5} {e.teacher:<21} {e.method:<15} {mean:>8}   [{lo}, {hi}]   {e.nodes}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(analyze_main())
