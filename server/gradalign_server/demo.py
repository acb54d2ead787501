"""``gradalign demo``: the whole product end to end on this machine, about 2 minutes on a 2-core CPU.

Starts a server in-process on a free port with SmolLM2-135M-Instruct (built-in name
``smollm2-135m``) and three self-distillation teachers (a correct demonstration, correct and wrong
demonstrations, a summary), vets a handful of bundled questions through the ordinary client, and
prints the ranked teacher table. The default settings are small so that it finishes in minutes on
two CPU cores; every one is a flag.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "demo_config"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradalign demo", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="student model (default %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default %(default)s)")
    p.add_argument("--dataset", default=None, help="JSONL questions (default: the bundled 'demo' set)")
    p.add_argument("--questions", type=int, default=4, help="questions to vet (default %(default)s)")
    p.add_argument("--rollouts", type=int, default=6, help="base rollouts per question (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="completion length (default %(default)s)")
    p.add_argument(
        "--temperature",
        type=float,
        default=0.7,
        help="student sampling temperature (default %(default)s: at 1.0 a 135M model solves less, leaving less signal)",
    )
    p.add_argument("--nodes-per-path", type=int, default=2, help="analysis nodes per rollout (default %(default)s)")
    p.add_argument(
        "--top-k", type=int, default=1, help="candidate top-k of the student and each teacher (default %(default)s)"
    )
    p.add_argument(
        "--continuations", type=int, default=2, help="continuations per forced candidate (default %(default)s)"
    )
    p.add_argument("--methods", default="forward_kl,reverse_kl,jsd", help="methods to score (default %(default)s)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed (default %(default)s)")
    p.add_argument("--db", default=None, help="SQLite store, to reuse trees across runs (default: a temporary file)")
    p.add_argument("--verbose", action="store_true", help="show the server's log (one line per call)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def demo_config(args: argparse.Namespace):
    """The RunConfig of the demo: one student, three self-distillation teachers, small settings."""
    from gradalign_engine.config import (
        AnalysisConfig,
        ModelSpec,
        RolloutConfig,
        RunConfig,
        SamplingConfig,
        TeacherSpec,
    )

    return RunConfig(
        student=ModelSpec(model=args.model, device=args.device),
        teachers=(
            TeacherSpec(name="correct_demo", kind="self", context="correct_demo"),
            TeacherSpec(name="correct_and_wrong", kind="self", context="correct_and_wrong"),
            TeacherSpec(name="summary", kind="self", context="summary"),
        ),
        sampling=SamplingConfig(temperature=args.temperature, max_new_tokens=args.max_new_tokens),
        rollouts=RolloutConfig(
            num_rollouts=args.rollouts,
            nodes_per_window=1,
            nodes_per_path=args.nodes_per_path,
            candidate_top_k=args.top_k,
            continuations=args.continuations,
        ),
        analysis=AnalysisConfig(
            methods=tuple(m for m in args.methods.split(",") if m), bootstrap_samples=args.bootstrap
        ),
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gradalign_client import Client, GradalignError
    from gradalign_client._table import format_table
    from gradalign_client.cli import _estimate_lines, vet_progress
    from gradalign_engine.data import bundled_dataset_path
    from gradalign_engine.errors import GradalignError as EngineError

    from ._cli import configure_logging
    from ._server import create_server

    configure_logging("info" if args.verbose else "warning", json_logs=False)
    dataset = args.dataset or str(bundled_dataset_path("demo"))
    try:
        config = demo_config(args)
    except EngineError as exc:
        print(f"gradalign demo: {exc}", file=sys.stderr)
        return 2
    tmp = None
    if args.db is None:
        tmp = tempfile.TemporaryDirectory(prefix="gradalign-demo-")
        db = str(Path(tmp.name) / "demo.sqlite")
    else:
        db = args.db
    started = time.perf_counter()
    print(f"loading {args.model} and starting a server (first use converts the model, ~30 s) ...", file=sys.stderr)
    server, port = create_server(config, "127.0.0.1:0", db)
    try:
        try:
            server.wait_until_ready()
        except Exception as exc:  # noqa: BLE001 - shown to the user as one line
            print(f"gradalign demo: could not load the model: {exc}", file=sys.stderr)
            return 1
        teachers = [t.name for t in config.teachers]
        print(
            f"server on 127.0.0.1:{port}; vetting {args.questions} questions of {dataset} with {', '.join(teachers)}",
            file=sys.stderr,
        )
        with Client(f"127.0.0.1:{port}", timeout=None) as client:
            try:
                methods = list(config.analysis.methods)
                estimate = client.estimate_cost(dataset, limit=args.questions, teachers=teachers)
                print(_estimate_lines(estimate), file=sys.stderr)
                progress, on_stage, close = vet_progress(min(args.questions, estimate.questions), args.quiet)
                run_started = time.perf_counter()
                try:
                    report = client.vet(
                        dataset, teachers, methods, args.questions, progress, seed=args.seed, on_stage=on_stage
                    )
                finally:
                    close()
                spent = time.perf_counter() - run_started
                generated = server.metrics.value("gradalign_tokens_generated_total")
            except GradalignError as exc:
                print(f"gradalign demo: {exc}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print("\ngradalign demo: interrupted; stopping the server", file=sys.stderr)
                return 130
        print(
            f"estimate vs actual: generated tokens {estimate.generated_tokens:,} vs {generated:,.0f} "
            f"(x{estimate.generated_tokens / max(generated, 1):.2f}), time {estimate.seconds:.0f} s vs {spent:.0f} s "
            f"(x{estimate.seconds / max(spent, 1e-9):.2f})",
            file=sys.stderr,
        )
        sys.stdout.write(format_table(report))
        print(f"\ndone in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        return 0
    finally:
        server.stop(grace=0)
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
