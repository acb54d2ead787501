"""The ``gradalign`` command line.

    gradalign vet --server HOST:PORT --dataset FILE.jsonl --teachers a,b [...]   vet teachers on a server
    gradalign health --server HOST:PORT                  SERVING? (exit 0) or not (1)
    gradalign models --server HOST:PORT                  list the loaded models
    gradalign serve --config CONFIG.toml [...]           run a server              (extra: server)
    gradalign analyze ...                                in-process run            (extra: engine)
    gradalign study [--config STUDY.toml]                the paper's study         (extra: engine)
    gradalign demo [...]                                 end-to-end demo on this CPU (extra: server)
    gradalign export --db STORE --out FILE.jsonl         a server's stored records (extra: server)

Only the light client is imported here; ``serve``, ``analyze`` and ``demo`` import the engine lazily
and say which extra to install when it is missing.

Exit codes: 0 success; 1 a failed call or a bad argument; 2 the server cannot be reached (or a
usage error); 3 the gated teacher's alignment is below ``--fail-below``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from ._errors import GradalignError
from .canonical import json_line

__all__ = ["main"]

# The one table of exit codes (README "Exit codes"; tests/test_cli_exit_codes.py checks each).
EXIT_OK = 0  # done (and the gate, if any, passed)
EXIT_ERROR = 1  # the server refused a call or the work failed (the message has the status and details)
EXIT_USAGE = 2  # bad arguments or input, found before any work: flag, file, name, missing extra
EXIT_UNREACHABLE = 2  # no gradalign server answered at --server (refused, unresolvable, timed out)
EXIT_GATE = 3  # the gated teacher's mean alignment is below --fail-below
EXIT_INTERRUPTED = 130


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradalign")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+unknown"


class UsageError(ValueError):
    """A command line or input the CLI refuses before any work (exit code 2)."""


_DELEGATED = {
    # command: (module, function, extra, what it needs)
    "serve": ("gradalign_server", "main", "server", "the gRPC server"),
    "analyze": ("gradalign_engine.cli", "analyze_main", "engine", "the in-process engine"),
    "study": ("gradalign_engine.cli_study", "study_main", "engine", "the paper's study on a real model"),
    "demo": ("gradalign_server.demo", "main", "server", "the demo (it runs a server in-process)"),
    "export": ("gradalign_server.export", "main", "server", "the export of a server's stored records"),
    "report": ("gradalign_client.html_report", "main", "client", "the HTML report of a run"),
    "weights": ("gradalign_client.training_weights", "main", "client", "per-token weights for selective distillation"),
}


def _delegate(command: str, argv: list[str]) -> int:
    import importlib

    module_name, function, extra, what = _DELEGATED[command]
    try:
        return int(getattr(importlib.import_module(module_name), function)(argv) or 0)
    except ModuleNotFoundError as exc:  # at import, or when the command first needs a heavy library
        missing = exc.name or str(exc)
        if missing.split(".")[0] in ("gradalign_engine", "gradalign_server", "gradalign_client"):
            raise  # a bug, not a missing extra
        print(
            f"gradalign {command}: {what} needs {missing}, which is not installed: pip install 'gradalign[{extra}]'",
            file=sys.stderr,
        )
        return EXIT_USAGE


PESSIMISM_NOTE = (
    "pessimistic: it counts every rollout's nodes as distinct and every teacher's top-k as new candidates; "
    "runs spend less (README, Speed)"
)


def _estimate_lines(e) -> str:
    c = e.calibration
    return (
        f"estimate for {e.questions} question(s): {e.generated_tokens:,} generated tokens, "
        f"{e.teacher_scored_tokens:,} teacher-scored tokens, {e.nodes:,} nodes, {e.seconds / 60:.1f} min\n"
        f"  {PESSIMISM_NOTE}\n"
        f"  calibration on the server ({c.seconds:.1f} s): sampling {c.generate_tokens_per_s:,.0f} tok/s, "
        f"scoring {c.score_tokens_per_s:,.0f} tok/s, completions {c.mean_completion_fraction:.0%} of the maximum"
    )


def vet_progress(total: int, quiet: bool = False):
    """(progress, on_stage, close) for Client.vet: one progress line with the build's stage, tok/s and ETA."""
    from .progress import ProgressLine

    bar = ProgressLine(total, enabled=not quiet)
    finished_tokens = [0]

    def progress(done: int, total: int, result) -> None:
        if result is None:
            return
        s = result.summary
        finished_tokens[0] += 0 if s.cache_hit else s.tokens_generated
        note = f"{result.question_id}: {s.correct}/{s.rollouts} correct" + (" (cached)" if s.cache_hit else "")
        bar.finish_unit(note, finished_tokens[0])

    def on_stage(question_id: str, event) -> None:
        if event.stage == "queued":
            bar.stage(question_id, f"queued ({event.queued_ahead} ahead)", 0, 0, finished_tokens[0])
        elif event.stage != "done":
            bar.stage(question_id, event.stage, event.done, event.total, finished_tokens[0] + event.tokens_generated)

    return progress, on_stage, bar.close


def _settings(pairs: list[str]) -> dict:
    """KEY=VALUE pairs -> dict, values parsed as JSON when they parse (numbers, true/false)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise GradalignError("INVALID_ARGUMENT", f"--set {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _names(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def _vet_inputs(args, client) -> tuple[list, list[str], list[str]]:
    """Questions, teachers and methods of ``vet``, every name checked before any tree is built."""
    from ._core import load_questions
    from .names import METHODS, canonical_method_name

    try:
        questions = load_questions(args.dataset, args.limit)
    except GradalignError as exc:
        raise UsageError(exc.details) from None
    methods = []
    for name in _names(args.methods):
        canonical = canonical_method_name(name)
        if canonical is None:
            raise UsageError(f"--methods: unknown method {name!r}; choose from {', '.join(METHODS)}")
        methods.append(canonical)
    loaded = [m.name for m in client.list_models() if m.role == "teacher"]
    teachers = _names(args.teachers) or loaded
    for name in teachers + ([args.fail_teacher] if args.fail_teacher else []):
        if name not in loaded:
            raise UsageError(f"unknown teacher {name!r}; the server has: {', '.join(loaded)}")
    if args.fail_teacher and args.fail_teacher not in teachers:
        raise UsageError(f"--fail-teacher {args.fail_teacher!r} is not among --teachers ({', '.join(teachers)})")
    gate_method = args.method_for_gate
    if gate_method is not None:
        canonical = canonical_method_name(gate_method)
        if canonical is None or (methods and canonical not in methods):
            raise UsageError(f"--method-for-gate {gate_method!r} is not among the methods scored")
    return questions, teachers, methods


def _write_vet_records(client, args, trees, teachers, methods, report) -> None:
    """--out (the records' JSONL) and --html (the report page) from one stream of the records.

    The page asks for prefix token ids (its token view shows whole completions); --out writes the
    records without them, byte for byte as it does without --html.
    """
    from contextlib import nullcontext

    kept, count = [], 0
    stream = client.stream_alignments(
        trees, teachers, methods, include_skipped=True, include_prefix_ids=bool(args.html)
    )
    with open(args.out, "w", encoding="utf-8") if args.out else nullcontext() as fh:
        for record in stream:
            data = record.to_dict()
            count += 1
            if args.html:
                kept.append(data)
            if fh is not None:
                fh.write(json_line({**data, "prefix_token_ids": None}) + "\n")
    if args.out:
        print(f"{count} records written to {args.out}", file=sys.stderr)
    if args.html:
        from .html_report import write_html

        summary = {"report": report.to_dict(), "receipt": report.receipt}
        write_html(args.html, kept, summary, f"gradalign vet: {args.dataset}")
        print(f"report written to {args.html}", file=sys.stderr)


def cmd_vet(args: argparse.Namespace) -> int:
    from . import _table

    settings = _settings(args.set)
    if args.rollouts is not None:
        settings["num_rollouts"] = args.rollouts
    if args.max_new_tokens is not None:
        settings["max_new_tokens"] = args.max_new_tokens
    with _client(args) as client:
        questions, teachers, methods = _vet_inputs(args, client)
        if args.dry_run:
            estimate = client.estimate_cost(
                questions, settings=settings or None, target_teachers=teachers, teachers=teachers
            )
            print(_estimate_lines(estimate))
            return EXIT_OK
        progress, on_stage, close = vet_progress(len(questions), args.quiet)
        trees: list[str] = []

        def collect(done, total, result):
            if result is not None:
                trees.append(result.tree_id)
            progress(done, total, result)

        try:
            report = client.vet(
                questions,
                teachers,
                methods,
                None,
                collect,
                settings=settings or None,
                seed=args.seed,
                on_stage=on_stage,
            )
        finally:
            close()
        sys.stdout.write(_table.format_table(report))
        if args.csv:
            _table.write_csv(report, args.csv)
            print(f"table written to {args.csv}", file=sys.stderr)
        if args.out or args.html:
            _write_vet_records(client, args, trees, teachers, methods, report)
    if args.fail_below is not None:
        gate_teacher = args.fail_teacher or teachers[0]
        try:
            method, value = _table.gate_value(report, gate_teacher, args.method_for_gate)
        except KeyError as exc:  # the report has no row for the gate (e.g. every node skipped)
            print(f"gradalign vet: gate: {exc.args[0]}", file=sys.stderr)
            return EXIT_ERROR
        if math.isnan(value) or value < args.fail_below:
            print(
                f"gradalign vet: gate failed: {gate_teacher} ({method}) mean alignment {value:.4f} < {args.fail_below}",
                file=sys.stderr,
            )
            return EXIT_GATE
        print(
            f"gate passed: {gate_teacher} ({method}) mean alignment {value:.4f} >= {args.fail_below}", file=sys.stderr
        )
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:

    with _client(args) as client:
        status = client.health(args.service, timeout=args.timeout)
    print(status)
    return EXIT_OK if status == "SERVING" else EXIT_ERROR


def cmd_models(args: argparse.Namespace) -> int:

    with _client(args) as client:
        models = client.list_models()
    width = max(len(m.name) for m in models)
    for m in models:
        kind = m.kind + (f"/{m.context}" if m.context else "")
        print(
            f"{m.role:<8} {m.name:<{width}}  {kind:<26} {m.backend:<5} {m.dtype:<9} {m.device:<7} model "
            f"{m.model_hash[:12]}  tokenizer {m.tokenizer_hash[:12]}"
        )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradalign",
        description="Vet on-policy distillation teachers by gradient alignment with the ideal per-token update.",
        epilog="Also: 'gradalign serve --config C.toml' (server), 'gradalign analyze ...' (in-process), "
        "'gradalign demo' (end-to-end demo on this machine); each takes --help.",
    )
    parser.add_argument("--version", action="version", version=f"gradalign {_version()}")
    sub = parser.add_subparsers(
        dest="command", metavar="{vet,health,models,serve,analyze,study,demo,export,report,weights}"
    )
    _add_vet(sub)
    health = sub.add_parser("health", help="print the server's health (exit 0 when SERVING)")
    _add_connection(health, 5.0)
    health.add_argument("--service", default="", help="service name ('' = the whole server)")
    health.set_defaults(func=cmd_health)
    models = sub.add_parser("models", help="list the server's student and teachers")
    _add_connection(models, 30.0)
    models.set_defaults(func=cmd_models)
    for name, (_, _, extra, what) in _DELEGATED.items():
        sub.add_parser(name, help=f"{what} (needs gradalign[{extra}]); see 'gradalign {name} --help'", add_help=False)
    return parser


def _add_connection(p: argparse.ArgumentParser, timeout: float | None) -> None:
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="address of a gradalign server")
    p.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help="bearer token file (or $GRADALIGN_TOKEN / $GRADALIGN_TOKEN_FILE)",
    )
    p.add_argument(
        "--token", default=None, help="bearer token itself (visible in the process list; prefer --token-file)"
    )
    p.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's roots")
    p.add_argument("--tls-ca", default=None, metavar="PEM", help="connect with TLS, trusting this CA (implies --tls)")
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="client certificate for mutual TLS")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="key of --tls-cert")
    p.add_argument(
        "--timeout", type=float, default=timeout, help="deadline of each call in seconds (default %(default)s)"
    )


def _client(args, timeout: float | None = None):
    """The Client the connection flags describe."""
    from ._client import Client
    from ._core import read_token, tls_credentials

    credentials = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
        credentials = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    token = read_token(args.token, args.token_file)
    return Client(
        args.server, timeout=args.timeout if timeout is None else timeout, token=token, credentials=credentials
    )


def _add_vet(sub) -> None:
    vet = sub.add_parser("vet", help="build trees for a dataset on a server and rank the teachers")
    _add_connection(vet, 3600.0)
    add = vet.add_argument
    add(
        "--dataset",
        required=True,
        metavar="FILE.jsonl",
        help="questions, one JSON object per line (id, question, answer, ...)",
    )
    add(
        "--teachers",
        default=None,
        metavar="A,B",
        help="teachers to vet (default: every loaded teacher); the first is gated",
    )
    add(
        "--methods",
        default=None,
        metavar="M,N",
        help="forward_kl, reverse_kl, jsd, single_sample, minillm (default: the server's)",
    )
    add("--limit", type=int, default=None, metavar="N", help="use the first N questions")
    add("--rollouts", type=int, default=None, metavar="G", help="base rollouts per question (default: the server's)")
    add("--max-new-tokens", type=int, default=None, metavar="T", help="completion length (default: the server's)")
    add(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any rollout or sampling setting, repeatable (e.g. continuations=2)",
    )
    add("--seed", type=int, default=None, help="seed of every random choice (default: the server's)")
    add(
        "--out",
        default=None,
        metavar="records.jsonl",
        help="also write every alignment record (skipped nodes included)",
    )
    add("--html", default=None, metavar="report.html", help="also write the offline HTML report (gradalign report)")
    add("--csv", default=None, metavar="table.csv", help="also write the ranked table as CSV")
    add(
        "--fail-below",
        type=float,
        default=None,
        metavar="X",
        help="exit 3 when the gated teacher's mean alignment is below X",
    )
    add(
        "--fail-teacher",
        default=None,
        metavar="NAME",
        help="teacher the gate checks (default: the first of --teachers)",
    )
    add(
        "--method-for-gate", default=None, metavar="M", help="method the gate checks (default: the first ranked method)"
    )
    add("--quiet", action="store_true", help="no progress line")
    add("--dry-run", action="store_true", help="print the expected tokens and time (the server calibrates), then stop")
    vet.set_defaults(func=cmd_vet)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gradalign`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _DELEGATED:
        return _delegate(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"gradalign {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GradalignError as exc:
        if exc.unreachable:
            print(
                f"gradalign: cannot reach a gradalign server at {args.server} ({exc.details.splitlines()[0]}); "
                f"is 'gradalign serve' running there?",
                file=sys.stderr,
            )
            return EXIT_UNREACHABLE
        print(f"gradalign {args.command}: {exc.code}: {exc.details}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError) as exc:
        print(f"gradalign {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("gradalign: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
