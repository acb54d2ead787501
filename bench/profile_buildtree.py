"""Where one BuildTree on SmolLM2 spends its time: phases (from the progress callback) and a cProfile.

Writes bench/results/profile_buildtree.json (phases, counters) and bench/results/profile_buildtree.txt
(the 35 most expensive functions by cumulative time).

Usage: .venv/bin/python bench/profile_buildtree.py [--max-new-tokens 64] [--rollouts 8]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradalign_engine.config import ModelSpec, RolloutConfig, RunConfig, SamplingConfig, TeacherSpec  # noqa: E402
from gradalign_engine.data import bundled_dataset_path, load_questions  # noqa: E402
from gradalign_engine.pipeline import Engine  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "profile_buildtree"))
    args = ap.parse_args()
    config = RunConfig(
        student=ModelSpec(model=args.model, device="cpu"),
        teachers=(TeacherSpec(name="correct_demo", context="correct_demo"),),
        sampling=SamplingConfig(max_new_tokens=args.max_new_tokens),
        rollouts=RolloutConfig(num_rollouts=args.rollouts, nodes_per_window=1, nodes_per_path=4, candidate_top_k=3, continuations=4),
    )
    engine = Engine(config)
    question = load_questions(bundled_dataset_path("demo"), limit=1)[0]
    marks: list[tuple[str, float]] = []
    t0 = time.perf_counter()

    def progress(stage: str, done: int, total: int) -> None:
        marks.append((f"{stage} {done}/{total}", time.perf_counter() - t0))

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
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".txt").write_text(text.getvalue())
    result = {"total_seconds": round(total, 3), "phases": phases, "summary": tree.summary.__dict__,
              "records": len(records), "counters": engine.student.counters.snapshot()}
    Path(args.out + ".json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
