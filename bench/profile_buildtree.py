"""Where one BuildTree on SmolLM2 spends its time: phases (from the progress callback) and a cProfile.

Writes bench/results/profile_buildtree.json (phases, counters) and bench/results/profile_buildtree.txt
(the 35 most expensive functions by cumulative time).

Usage: .venv/bin/python bench/profile_buildtree.py [--max-new-tokens 64] [--rollouts 8]
       .venv/bin/python bench/profile_buildtree.py --smoke   # tiny random model, seconds (CI)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

from _common import parse_args, result_path, tiny_model_dir, write_result

from gradalign_engine.config import ModelSpec, RolloutConfig, RunConfig, SamplingConfig, TeacherSpec
from gradalign_engine.data import bundled_dataset_path, load_questions
from gradalign_engine.pipeline import Engine

NAME = "profile_buildtree"
SMOKE = {"rollouts": 4, "max_new_tokens": 12}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--model", default=None, help="model name or directory (default smollm2-135m; --smoke: tiny)")
    ap.add_argument(
        "--out", default=None, help="prefix of the .json and .txt files (default bench/results/profile_buildtree)"
    )
    args = parse_args(ap, SMOKE, argv)
    args.model = args.model or (str(tiny_model_dir()) if args.smoke else "smollm2-135m")
    args.out = args.out or str(result_path(NAME, args.smoke).with_suffix(""))
    config = RunConfig(
        student=ModelSpec(model=args.model, device="cpu"),
        teachers=(TeacherSpec(name="correct_demo", context="correct_demo"),),
        sampling=SamplingConfig(max_new_tokens=args.max_new_tokens),
        rollouts=RolloutConfig(
            num_rollouts=args.rollouts, nodes_per_window=1, nodes_per_path=4, candidate_top_k=3, continuations=4
        ),
    )
    engine = Engine(config)
    question = load_questions(bundled_dataset_path("demo"), limit=1)[0]
    marks: list[tuple[str, float]] = []
    t0 = time.perf_counter()

    def progress(stage: str, done: int, total: int) -> None:
        # One mark per stage, moved forward by its every event: a phase ends at its stage's last event.
        now = time.perf_counter() - t0
        if marks and marks[-1][0] == stage:
            marks[-1] = (stage, now)
        else:
            marks.append((stage, now))

    profiler = cProfile.Profile()
    profiler.enable()
    tree = engine.build_tree(question, progress=progress)
    records = engine.score_tree(tree, ["correct_demo"], ["forward_kl", "reverse_kl"])
    profiler.disable()
    total = time.perf_counter() - t0
    phases = []
    last = 0.0
    for name, at in marks + [("score_tree", total)]:
        phases.append({"until": name, "seconds": round(at - last, 3)})
        last = at
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(35)
    result = {
        "total_seconds": round(total, 3),
        "phases": phases,
        "summary": tree.summary.__dict__,
        "records": len(records),
        "counters": engine.student.counters.snapshot(),
    }
    write_result(NAME, result, args.smoke, args.out + ".json")
    Path(args.out + ".txt").write_text(text.getvalue())
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
