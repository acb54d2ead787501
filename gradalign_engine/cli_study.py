"""``gradalign study``: the paper's analyses on a real model as one command (docs/study.md).

Parses the command line, runs :func:`~.study.run_study` (or the survey, or the dry-run estimate), and
writes study.json, study.md, records.jsonl and, with ``--html``, the report. Shares the record
writing and the report's prefix handling with ``gradalign analyze`` (:mod:`.cli`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from gradalign_client.canonical import json_safe

from .cli import _as_written, _jsonl_record, _quiet_libraries, _with_prefix_ids_for_html, write_records, write_report

__all__ = ["build_study_parser", "study_main"]


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
    parser.add_argument("--html", default=None, metavar="FILE", help="Also write the HTML report (gradalign report).")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="Print the expected generated and teacher-scored tokens and time (a short calibration), then stop.",
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

    if args.quiet:
        _quiet_libraries()
    config_path = Path(args.config) if args.config else bundled_config_path("study_smollm2")
    study, config = load_study_config(config_path)
    keep_prefix_ids = config.analysis.include_prefix_ids
    config = _with_prefix_ids_for_html(config, args.html)
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
    if args.dry_run:
        from .study import estimate_study

        engine = Engine(config)
        for line in estimate_study(engine, study, config_path.parent).lines():
            print(line)
        engine.close()
        return 0
    result = run_study(study, config, root=config_path.parent, say=say, show_progress=not args.quiet)
    records = result.pop("records")
    result["receipt"] = _as_written(result["receipt"], keep_prefix_ids)
    write_records(out / "records.jsonl", result["receipt"], [_jsonl_record(r, keep_prefix_ids) for r in records])
    result["command"] = command
    (out / "study.json").write_text(json.dumps(json_safe(result), indent=2))
    (out / "study.md").write_text(study_markdown(json.loads(json.dumps(json_safe(result))), command))
    if args.html:
        write_report(args.html, records, result, f"gradalign study: {config_path.stem}", config)
    cost = result["cost"]
    if cost["estimate"]:
        from .cost import CostEstimate, compare

        estimate = CostEstimate.from_dict(cost["estimate"])
        say(compare(estimate, cost["spent"]["generated_tokens"], cost["spent"]["seconds"]))
    say(
        f"wrote {out / 'study.md'}, {out / 'study.json'} and {len(records)} records to {out / 'records.jsonl'} "
        f"in {result['seconds'] / 60:.1f} min"
    )
    return 0


def _task_path(task) -> Path:
    from .data import bundled_dataset_path

    path = Path(task.dataset)
    return bundled_dataset_path(task.dataset) if not path.suffix else path
