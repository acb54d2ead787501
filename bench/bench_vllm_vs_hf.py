"""Benchmark: the same tree workload through the HF backend and the vLLM backend, side by side.

Each side builds the same trees (``Engine.build_tree`` on the first questions of the bundled demo
set: base rollouts, student scoring, forced continuations) in its own fresh process, one after the
other, so that neither inherits the other's threads or memory. Reported per side: generated
tokens, seconds inside ``generate`` and generated tokens/s there, and whole-tree seconds (which also
include the exact scoring pass, done by transformers on both sides). The JSON goes to
``bench/results/vllm_vs_hf.json``.

Run it in the vLLM virtual environment (``bash scripts/setup_vllm_venv.sh`` first)::

    .venv-vllm/bin/python bench/bench_vllm_vs_hf.py            # SmolLM2-135M, a few minutes on 2 idle cores
    .venv-vllm/bin/python bench/bench_vllm_vs_hf.py --tiny     # the tiny random test model, ~1 minute
    .venv-vllm/bin/python bench/bench_vllm_vs_hf.py --smoke    # tiny model, 1 pair, a small tree (CI)

Without vllm installed, ``--smoke`` prints that it skips and exits 0 (bench/run_smoke.sh runs in the main venv).

The two sides sample with different random streams (vLLM's sampler is not the HF loop), so their
trees differ in content and length; tokens/s is the comparable figure. ``--repeats`` pairs run with
the sides alternating; every pair's ratio is kept and the median is the reported one. On a small shared machine
the figures swing with other load (OpenMP threads spin-wait when a core is taken): the JSON records
the load average, and ``--threads 1`` makes both sides less sensitive to it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, add_model_arguments, parse_args, tiny_model_dir, write_result

NAME = "vllm_vs_hf"
SMOKE = {"tiny": True, "repeats": 1, "rollouts": 4, "continuations": 2, "max_continuations": 8, "max_new_tokens": 12}
# The options a side's process gets from the parent, as (flag, attribute).
SIDE_OPTIONS = (
    ("--questions", "questions"),
    ("--rollouts", "rollouts"),
    ("--continuations", "continuations"),
    ("--max-continuations", "max_continuations"),
    ("--max-new-tokens", "max_new_tokens"),
    ("--kv-gib", "kv_gib"),
    ("--dtype", "dtype"),
    ("--seed", "seed"),
)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(p)  # --model, --tiny, --kv-gib, --dtype, --seed
    p.add_argument("--questions", type=int, default=1, help="demo questions (default 1)")
    p.add_argument("--rollouts", type=int, default=8, help="base rollouts per question (default 8)")
    p.add_argument("--continuations", type=int, default=4, help="continuations per candidate (default 4)")
    p.add_argument("--max-continuations", type=int, default=32, help="continuation budget per question (default 32)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="completion length limit (default 48)")
    p.add_argument("--threads", type=int, help="OMP/torch threads of each side (default: torch's default)")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="hf/vllm pairs, run alternately; the median ratio is reported (default 3)",
    )
    p.add_argument("--out", type=Path, default=None, help="result file (default bench/results/vllm_vs_hf.json)")
    p.add_argument("--side", choices=("hf", "vllm"), help=argparse.SUPPRESS)  # internal: run one side
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    return parse_args(p, SMOKE, argv)


# ---------------------------------------------------------------------------------------- one side (child process)
def side_config(args: argparse.Namespace):
    """The student's ModelSpec and the run's RunConfig of one side."""
    from gradalign_engine.config import ModelSpec, RolloutConfig, RunConfig, SamplingConfig

    spec = ModelSpec(
        model=args.model_dir,
        backend=args.side,
        device="cpu",
        dtype=args.dtype,
        vllm_kv_cache_bytes=int(args.kv_gib * 1024**3),
    )
    config = RunConfig(
        student=spec,
        sampling=SamplingConfig(max_new_tokens=args.max_new_tokens),
        rollouts=RolloutConfig(
            num_rollouts=args.rollouts,
            continuations=args.continuations,
            nodes_per_window=1,
            nodes_per_path=6,
            max_continuations=args.max_continuations,
        ),
        seed=args.seed,
    )
    return spec, config


def time_generate(backend) -> tuple[dict, object]:
    """Make ``backend.generate`` add up its seconds and calls; return that tally and the untimed original."""
    timing = {"generate_s": 0.0, "generate_calls": 0}
    inner = backend.generate

    def timed_generate(*a, **kw):
        t0 = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            timing["generate_s"] += time.perf_counter() - t0
            timing["generate_calls"] += 1

    backend.generate = timed_generate  # type: ignore[method-assign]
    return timing, inner


def build_trees(engine, questions) -> tuple[list[dict], float]:
    """Each question's tree summary, and the seconds of all the ``build_tree`` calls."""
    trees = []
    t0 = time.perf_counter()
    for q in questions:
        tree = engine.build_tree(q)
        trees.append(
            {
                "question": q.id,
                "rollouts": tree.summary.rollouts,
                "correct": tree.summary.correct,
                "nodes": tree.summary.nodes_analysed,
                "continuations": tree.summary.continuations,
                "tokens_generated": tree.summary.tokens_generated,
                "seconds": tree.summary.seconds,
            }
        )
    return trees, time.perf_counter() - t0


def run_side(args: argparse.Namespace) -> dict:
    """Build the trees with one backend in this process; return its measurements."""
    if args.side == "vllm":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch

    from gradalign_engine.backends import BranchRequest, load_backend
    from gradalign_engine.data import bundled_dataset_path, load_questions
    from gradalign_engine.pipeline import Engine

    spec, config = side_config(args)
    started = time.perf_counter()
    backend = load_backend(spec)
    load_s = time.perf_counter() - started
    # Time the sampling calls themselves (the engine also scores and verifies in between).
    timing, inner = time_generate(backend)
    engine = Engine(config, backends={"student": backend})
    try:
        # Warm-up (first-call allocations, vLLM's first schedule): not measured.
        # A first score() call too: the vLLM engine scores, or with vllm_scoring="twin" loads its twin.
        warm = tuple(backend.tokenizer.encode("1 + 1 =")) or (1,)
        inner([BranchRequest(prefix=warm, n=2, max_new_tokens=4, seed=1)], temperature=1.0)
        backend.score([list(warm)], [list(warm)])
        generated_before = backend.counters.snapshot()["generated_tokens"]
        trees, tree_s = build_trees(engine, load_questions(bundled_dataset_path("demo"), limit=args.questions))
        generated = backend.counters.snapshot()["generated_tokens"] - generated_before
    finally:
        engine.close()
    return {
        "backend": args.side,
        "load_s": round(load_s, 2),
        "generated_tokens": generated,
        "generate_s": round(timing["generate_s"], 3),
        "generate_calls": timing["generate_calls"],
        "generate_tokens_per_s": round(generated / timing["generate_s"], 1) if timing["generate_s"] else None,
        "tree_s": round(tree_s, 3),
        "tree_tokens_per_s": round(generated / tree_s, 1) if tree_s else None,
        "torch_threads": torch.get_num_threads(),
        "trees": trees,
    }


# ---------------------------------------------------------------------------------------- the parent
def resolve_model(args: argparse.Namespace) -> tuple[str, str]:
    """The model directory both sides load, and its name."""
    if args.tiny:
        return str(tiny_model_dir()), "tiny-random-llama"
    from gradalign_engine.models import resolve_model as resolve

    resolved = resolve(args.model)  # converts a built-in once, before either side runs
    return str(resolved.path), resolved.name


def spawn_side(args: argparse.Namespace, side: str, model_dir: str) -> dict | None:
    """Run one side in a fresh process; its measurements, or None (its stderr shown) when it failed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--model-dir", model_dir]
    for flag, attr in SIDE_OPTIONS:
        cmd += [flag, str(getattr(args, attr))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        print(f"[bench] {side} failed (exit {proc.returncode})", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_pairs(args: argparse.Namespace, model_dir: str, model_name: str) -> list[dict] | None:
    """``args.repeats`` hf/vllm pairs, the order alternating; None as soon as a side fails."""
    runs: list[dict] = []
    for repeat in range(args.repeats):
        # Alternate the sides so that drifting background load falls on both.
        order = ("hf", "vllm") if repeat % 2 == 0 else ("vllm", "hf")
        sides = {}
        for side in order:
            print(
                f"[bench] repeat {repeat + 1}/{args.repeats}, {side}: building {args.questions} tree(s) "
                f"with {model_name} ...",
                file=sys.stderr,
                flush=True,
            )
            st = sides[side] = spawn_side(args, side, model_dir)
            if st is None:
                return None
            print(
                f"[bench] {side}: {st['generated_tokens']} tokens, {st['generate_tokens_per_s']} tok/s in "
                f"generate, trees {st['tree_s']} s",
                file=sys.stderr,
                flush=True,
            )
        sides["load_average"] = [round(x, 2) for x in os.getloadavg()]
        runs.append(sides)
    return runs


def ratio(run: dict, key: str) -> float | None:
    hf_value, vllm_value = run["hf"][key], run["vllm"][key]
    return round(vllm_value / hf_value, 3) if hf_value and vllm_value else None


def median(values: list) -> float | None:
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def summarize(args: argparse.Namespace, model_name: str, runs: list[dict]) -> dict:
    import torch
    import transformers
    import vllm

    generate_ratios = [ratio(r, "generate_tokens_per_s") for r in runs]
    tree_ratios = [ratio(r, "tree_tokens_per_s") for r in runs]
    return {
        "benchmark": "vllm_vs_hf",
        "model": model_name,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "workload": {
            "questions": args.questions,
            "num_rollouts": args.rollouts,
            "continuations": args.continuations,
            "max_continuations": args.max_continuations,
            "max_new_tokens": args.max_new_tokens,
            "dtype": args.dtype,
            "seed": args.seed,
            "threads": args.threads,
            "repeats": args.repeats,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "vllm": vllm.__version__,
        },
        "runs": runs,
        "ratios_generate_tokens_per_s": generate_ratios,
        "ratios_tree_tokens_per_s": tree_ratios,
        "ratio_generate_tokens_per_s": median(generate_ratios),
        "ratio_tree_tokens_per_s": median(tree_ratios),
    }


def main(argv=None) -> int:
    args = parse(argv)
    if args.side:
        print(json.dumps(run_side(args)))
        return 0
    if args.smoke and importlib.util.find_spec("vllm") is None:
        print(
            f"[bench] SKIP bench_vllm_vs_hf --smoke: vllm is not importable by {sys.executable} "
            "(run it with .venv-vllm/bin/python; bash scripts/setup_vllm_venv.sh creates that venv)"
        )
        return 0
    model_dir, model_name = resolve_model(args)
    runs = run_pairs(args, model_dir, model_name)
    if runs is None:
        return 1
    result = summarize(args, model_name, runs)
    write_result(NAME, result, args.smoke, args.out)
    headline = (
        "model",
        "ratios_generate_tokens_per_s",
        "ratio_generate_tokens_per_s",
        "ratios_tree_tokens_per_s",
        "ratio_tree_tokens_per_s",
    )
    print(json.dumps({k: result[k] for k in headline}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
