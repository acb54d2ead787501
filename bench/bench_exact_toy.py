"""Exactness benchmarks on the exact-enumeration toy (tests/exact_toy.py), as JSON.

1. Adaptive vs uniform allocation (method.md step 6): mean alignment error |cos - exact cos| over
   the scored nodes (tests/exact_toy.py: tree_alignment_error), against the student rollouts sampled
   (base rollouts + continuations that drew tokens), averaged over seeds. Uniform spends M
   continuations per candidate; adaptive spends 2 per candidate, then an extra budget aimed at the
   teacher's cosines (gradalign_engine/allocation.py). Base rollouts are shared across settings with
   the same seed, so every point is measured on the same nodes. Reported: for each adaptive point, the least
   uniform spend reaching the same error (log-linear interpolation on the curve's running minimum) and the ratio.
2. bf16 vs float32: the largest |p - p_exact| over reported candidates and the alignment error, both
   dtypes on the same trees' settings.

Usage: .venv/bin/python bench/bench_exact_toy.py [--seeds 48]   (about 20 minutes on 2 quiet CPU cores)
       .venv/bin/python bench/bench_exact_toy.py --smoke   # 1 seed, a short grid: seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import parse_args, write_result
from exact_toy import QUESTION, ExactToy, make_toy_model_dir, toy_config, tree_alignment_error

from gradalign_engine.pipeline import Engine

NAME = "exact_toy"
UNIFORM_CONTINUATIONS = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
ADAPTIVE_EXTRAS = (400, 800, 1600, 3200, 6400, 12800, 25600, 51200)
SMOKE = {"seeds": 1}
SMOKE_UNIFORM, SMOKE_ADAPTIVE = (2, 4), (8,)


def spend_and_error(model_dir, exact, seeds, **settings) -> tuple[float, float]:
    engine = Engine(toy_config(model_dir, rollouts=8, **settings))
    errors, spent = [], []
    for seed in seeds:
        tree = engine.build_tree(QUESTION, seed=seed)
        errors.append(tree_alignment_error(engine, exact, tree)[0])
        # Rollouts sampled: base rollouts and continuations that drew tokens. A forced end-of-sequence
        # (or a forced token at the length limit) has a known outcome and costs nothing: not counted.
        spent.append(len(tree.rollouts) + sum(1 for c in tree.continuations if c.tokens))
    return float(np.mean(spent)), float(np.nanmean(errors))


def interpolate_spend(curve: list[tuple[float, float]], target_error: float) -> float | None:
    """Least uniform spend whose error is <= ``target_error``, log-linear between measured points.

    The curve is first made monotone (running minimum of the error over spend): a smaller budget
    that happened to measure a lower error also reaches the target.
    """
    pts = sorted(curve)
    envelope = np.minimum.accumulate([e for _, e in pts])
    for i, ((s1, _), e1) in enumerate(zip(pts, envelope)):
        if e1 <= target_error:
            if i == 0:
                return s1
            s0, e0 = pts[i - 1][0], envelope[i - 1]
            frac = (e0 - target_error) / (e0 - e1)
            return float(np.exp(np.log(s0) + frac * (np.log(s1) - np.log(s0))))
    return None


def adaptive_points(model_dir, exact, seeds, extras, uniform) -> list[dict]:
    """Each adaptive budget's spend and error, with the uniform spend reaching the same error."""
    points = []
    for extra in extras:
        spend, err = spend_and_error(
            model_dir, exact, seeds, continuations=2, adaptive_continuations=extra, adaptive_batch=4
        )
        need = interpolate_spend(uniform, err)
        points.append(
            {
                "adaptive_continuations": extra,
                "spent": spend,
                "error": err,
                "uniform_spend_for_same_error": need,
                "ratio_adaptive_over_uniform": (spend / need) if need else None,
            }
        )
        print(points[-1], flush=True)
    return points


def dtype_errors(model_dir, exact, seeds) -> dict:
    """bf16 vs float32 on the same settings: worst |p - p_exact| and mean alignment error."""
    dtypes = {}
    for dtype in ("float32", "bfloat16"):
        engine = Engine(toy_config(model_dir, rollouts=8, continuations=8, dtype=dtype))
        worst, errs = 0.0, []
        for seed in seeds:
            tree = engine.build_tree(QUESTION, seed=seed)
            for rec in engine.score_tree(tree, ["ctx"], ["forward_kl"]):
                p = exact.dist(tuple(exact.student_prompt), tuple(tree.rollouts[rec.rollout_index].tokens[: rec.depth]))
                worst = max(worst, max(abs(c.p - p[c.token_id]) for c in rec.candidates))
            errs.append(tree_alignment_error(engine, exact, tree)[0])
        dtypes[dtype] = {"max_abs_p_error": worst, "mean_alignment_error": float(np.nanmean(errs))}
    return dtypes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=48)
    ap.add_argument("--out", default=None, help="result file (default bench/results/exact_toy.json)")
    args = parse_args(ap, SMOKE, argv)
    uniform_grid = SMOKE_UNIFORM if args.smoke else UNIFORM_CONTINUATIONS
    adaptive_grid = SMOKE_ADAPTIVE if args.smoke else ADAPTIVE_EXTRAS
    seeds = list(range(args.seeds))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_toy_model_dir(Path(tmp) / "toy")
        exact = ExactToy(model_dir)
        uniform = [spend_and_error(model_dir, exact, seeds, continuations=m) for m in uniform_grid]
        adaptive = adaptive_points(model_dir, exact, seeds, adaptive_grid, uniform)
        dtypes = dtype_errors(model_dir, exact, seeds[:3])

    result = {
        "benchmark": "exact_toy",
        "seeds": args.seeds,
        "seconds": round(time.perf_counter() - started, 1),
        "uniform": [
            {"continuations_per_candidate": m, "spent": s, "error": e} for m, (s, e) in zip(uniform_grid, uniform)
        ],
        "adaptive": adaptive,
        "dtype": dtypes,
    }
    write_result(NAME, result, args.smoke, args.out)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
