"""`gradalign analyze`: the whole method in-process, no server, for notebooks and scripts.

Reads a TOML run config and a JSONL dataset, builds one tree per question, scores every configured
teacher and method, and writes per-node records (JSONL; the first line is the receipt) and a summary
(receipt, tree summaries, the aggregate report). Knows files and argparse; the work is the Engine's.
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

__all__ = ["analyze_main", "study_main", "build_parser", "write_records"]


def write_records(path: Path, receipt: dict, records) -> None:
    """JSONL of records: the receipt first, then one canonical line per record (``gradalign_client.canonical``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        fh.write(json_line({"receipt": receipt}) + "\n")
        for record in records:
            fh.write(json_line(record.to_dict()) + "\n")


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
    parser.add_argument("--out", default="records.jsonl", help="Per-node records, JSONL (first line: the receipt).")
    parser.add_argument(
        "--summary", default="summary.json", help="Receipt, tree summaries and the aggregate report, JSON."
    )
    parser.add_argument(
        "--teachers", default=None, help="Comma-separated teacher names to score (default: all configured)."
    )
    parser.add_argument(
        "--methods", default=None, help="Comma-separated methods (default: the config's analysis.methods)."
    )
    parser.add_argument("--seed", type=int, default=None, help="Override the config's seed.")
    parser.add_argument("--quiet", action="store_true", help="No progress on stderr.")
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


def _analyze(args) -> int:
    config, questions, teachers, methods = _checked_inputs(args)
    from .aggregate import build_report
    from .pipeline import Engine

    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    started = time.perf_counter()
    engine = Engine(config)
    say(
        f"loaded student {engine.student.info.name} ({engine.student.info.backend}, {engine.student.info.dtype}) "
        f"and {len(engine.teachers)} teacher(s) in {time.perf_counter() - started:.1f}s"
    )
    receipt = engine.receipt()
    receipt["dataset"] = str(args.dataset)
    records, summaries = [], []
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8") as out:
        out.write(json_line({"receipt": receipt}) + "\n")
        for n, question in enumerate(questions, 1):
            tree = engine.build_tree(question)
            recs = engine.score_tree(tree, teachers, methods)
            for r in recs:
                out.write(json_line(r.to_dict()) + "\n")
            records.extend(recs)
            summaries.append(dataclasses.asdict(tree.summary))
            s = tree.summary
            say(
                f"[{n}/{len(questions)}] {question.id}: {s.correct}/{s.rollouts} correct, {s.nodes_analysed} nodes, "
                f"{s.continuations} continuations, {s.tokens_generated} tokens, {s.seconds:.1f}s"
            )
    report = build_report(records, config.analysis, seed=config.seed, trees=summaries)
    summary = {
        "receipt": receipt,
        "trees": summaries,
        "report": report.to_dict(),
        "seconds": round(time.perf_counter() - started, 2),
    }
    Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
    Path(args.summary).write_text(json.dumps(json_safe(summary), indent=2))
    say(format_ranking(report))
    say(f"wrote {len(records)} records to {args.out} and the summary to {args.summary}")
    engine.close()
    return 0


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


def build_study_parser(prog: str = "gradalign study") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="The paper's analyses on a real model as one command (docs/study.md)."
    )
    parser.add_argument(
        "--config",
        default=None,
        help="study TOML: a run config plus a [study] table (default: the bundled SmolLM2 study).",
    )
    parser.add_argument(
        "--out",
        default="gradalign-study",
        help="output folder: study.json, study.md, records.jsonl (default %(default)s).",
    )
    parser.add_argument(
        "--questions", type=int, default=None, help="override every task's question count (a quick run)."
    )
    parser.add_argument(
        "--survey", action="store_true", help="instead: success rates per data set and temperature (task choice)."
    )
    parser.add_argument(
        "--datasets", default=None, help="--survey: comma-separated JSONL paths (default: the study's tasks)."
    )
    parser.add_argument("--temperatures", default="0.7,1.0", help="--survey: temperatures (default %(default)s).")
    parser.add_argument(
        "--rollouts", type=int, default=8, help="--survey: rollouts per question (default %(default)s)."
    )
    parser.add_argument("--quiet", action="store_true", help="No progress on stderr.")
    return parser


def study_main(argv: list[str] | None = None) -> int:
    from .errors import GradalignError

    args = build_study_parser().parse_args(argv)
    try:
        return _study(args, argv)
    except GradalignError as exc:
        print(f"gradalign study: error: {exc}", file=sys.stderr)
        return 2


def _study(args, argv) -> int:
    from .data import bundled_config_path
    from .pipeline import Engine
    from .study import load_study_config, run_study, survey
    from .study_markdown import study_markdown

    config_path = Path(args.config) if args.config else bundled_config_path("study_smollm2")
    study, config = load_study_config(config_path)
    if args.questions is not None:
        study = dataclasses.replace(
            study, tasks=tuple(dataclasses.replace(t, questions=args.questions) for t in study.tasks)
        )
    say = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "gradalign study " + " ".join(argv if argv is not None else sys.argv[2:])
    if args.survey:
        paths = [Path(p) for p in args.datasets.split(",")] if args.datasets else None
        datasets = [(p.stem, p) for p in paths] if paths else [(t.name, _task_path(t)) for t in study.tasks]
        temps = [float(t) for t in args.temperatures.split(",")]
        questions = args.questions or max(t.questions for t in study.tasks)
        rows = survey(Engine(config), datasets, temps, questions, args.rollouts, say)
        (out / "survey.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
        say(f"wrote {out / 'survey.json'}")
        return 0
    result = run_study(study, config, root=config_path.parent, say=say)
    records = result.pop("records")
    write_records(out / "records.jsonl", result["receipt"], records)
    result["command"] = command
    (out / "study.json").write_text(json.dumps(json_safe(result), indent=2))
    (out / "study.md").write_text(study_markdown(json.loads(json.dumps(json_safe(result))), command))
    say(
        f"wrote {out / 'study.md'}, {out / 'study.json'} and {len(records)} records to {out / 'records.jsonl'} "
        f"in {result['seconds'] / 60:.1f} min"
    )
    return 0


def _task_path(task) -> Path:
    from .data import bundled_dataset_path

    path = Path(task.dataset)
    return bundled_dataset_path(task.dataset) if not path.suffix else path
