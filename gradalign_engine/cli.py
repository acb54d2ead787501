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

__all__ = ["analyze_main", "build_parser", "json_safe"]


def json_safe(value):
    """Replace NaN and infinities (not JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def build_parser(prog: str = "gradalign analyze") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="TOML run config: [student], [[teachers]], [sampling], [prompt], [rollouts], [analysis], seed.")
    parser.add_argument("--dataset", required=True, help="JSONL dataset (id, question, answer, verifier, optional solution/choices).")
    parser.add_argument("--limit", type=int, default=None, help="Analyse only the first N questions.")
    parser.add_argument("--out", default="records.jsonl", help="Per-node records, JSONL (first line: the receipt).")
    parser.add_argument("--summary", default="summary.json", help="Receipt, tree summaries and the aggregate report, JSON.")
    parser.add_argument("--teachers", default=None, help="Comma-separated teacher names to score (default: all configured).")
    parser.add_argument("--methods", default=None, help="Comma-separated methods (default: the config's analysis.methods).")
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


def _analyze(args) -> int:
    from .aggregate import build_report
    from .config import load_run_config
    from .data import load_questions
    from .errors import ConfigError
    from .pipeline import Engine

    config = load_run_config(args.config)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit", args.limit, "must be >= 1")
    questions = load_questions(args.dataset, limit=args.limit)
    if not config.teachers:
        raise ConfigError("teachers", [], "the config names no teacher ([[teachers]] tables)")
    teachers = args.teachers.split(",") if args.teachers else [t.name for t in config.teachers]
    methods = args.methods.split(",") if args.methods else list(config.analysis.methods)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    started = time.perf_counter()
    engine = Engine(config)
    say(f"loaded student {engine.student.info.name} ({engine.student.info.backend}, {engine.student.info.dtype}) "
        f"and {len(engine.teachers)} teacher(s) in {time.perf_counter() - started:.1f}s")
    receipt = engine.receipt()
    receipt["dataset"] = str(args.dataset)
    records, summaries = [], []
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w") as out:
        out.write(json.dumps({"receipt": json_safe(receipt)}) + "\n")
        for n, question in enumerate(questions, 1):
            tree = engine.build_tree(question)
            recs = engine.score_tree(tree, teachers, methods)
            for r in recs:
                out.write(json.dumps(json_safe(r.to_dict())) + "\n")
            records.extend(recs)
            summaries.append(dataclasses.asdict(tree.summary))
            s = tree.summary
            say(f"[{n}/{len(questions)}] {question.id}: {s.correct}/{s.rollouts} correct, {s.nodes_analysed} nodes, "
                f"{s.continuations} continuations, {s.tokens_generated} tokens, {s.seconds:.1f}s")
    report = build_report(records, config.analysis, seed=config.seed)
    summary = {"receipt": receipt, "trees": summaries, "report": report.to_dict(),
               "seconds": round(time.perf_counter() - started, 2)}
    Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
    Path(args.summary).write_text(json.dumps(json_safe(summary), indent=2))
    say(format_ranking(report))
    say(f"wrote {len(records)} records to {args.out} and the summary to {args.summary}")
    engine.close()
    return 0


def format_ranking(report) -> str:
    lines = ["rank  teacher               method          mean cos   95% CI              nodes"]
    for e in report.ranking:
        lo = "nan" if e.mean_ci_low is None or (isinstance(e.mean_ci_low, float) and math.isnan(e.mean_ci_low)) else f"{e.mean_ci_low:+.3f}"
        hi = "nan" if e.mean_ci_high is None or (isinstance(e.mean_ci_high, float) and math.isnan(e.mean_ci_high)) else f"{e.mean_ci_high:+.3f}"
        mean = "nan" if e.mean_cosine is None or (isinstance(e.mean_cosine, float) and math.isnan(e.mean_cosine)) else f"{e.mean_cosine:+.3f}"
        lines.append(f"{e.rank:<5} {e.teacher:<21} {e.method:<15} {mean:>8}   [{lo}, {hi}]   {e.nodes}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(analyze_main())
