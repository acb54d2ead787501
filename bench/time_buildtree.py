"""One timing of BuildTree in the checkout it runs from: the A/B half of a before/after comparison.

The bench_buildtree workload (demo questions, its tree settings), trees only: no raw `generate`, no
ceiling. Run it alternately in two checkouts (for example the previous commit in a git worktree,
with this repository's .venv) and compare tokens per second pair by pair.

Usage: .venv/bin/python bench/time_buildtree.py [--questions 2] [--max-new-tokens 48] [--dtype float32]
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
# This checkout's engine first, whatever the virtual environment has installed.
sys.path[:0] = [str(HERE.parent), str(HERE)]

import bench_buildtree  # noqa: E402

from gradalign_engine.data import bundled_dataset_path, load_questions  # noqa: E402
from gradalign_engine.pipeline import Engine  # noqa: E402


def main(argv=None) -> int:
    args = bench_buildtree.parse(argv)
    engine = Engine(bench_buildtree.build_config(args, args.tiny or "smollm2-135m"))
    generated, seconds = 0, 0.0
    for question in load_questions(bundled_dataset_path("demo"), limit=args.questions):
        before = engine.student.counters.snapshot()["generated_tokens"]
        t0 = time.perf_counter()
        engine.build_tree(question)
        seconds += time.perf_counter() - t0
        generated += engine.student.counters.snapshot()["generated_tokens"] - before
        engine.student.clear_prefix_cache()
    engine.close()
    print(
        json.dumps(
            {
                "checkout": str(HERE.parent),
                "seconds": round(seconds, 2),
                "generated_tokens": generated,
                "tokens_per_second": round(generated / seconds, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
