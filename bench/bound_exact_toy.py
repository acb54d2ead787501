"""The best any allocation could do on the exact toy: a clairvoyant bound for bench_exact_toy.py's ratio.

For trees built with uniform allocation (M continuations per candidate), take the visits each child of
S(u) actually received and the exact success probabilities (tests/exact_toy.py). In the delta-method
(large-sample) approximation the error of node i's cosine is

    E|cos_hat - cos| = sqrt(2/pi) * sqrt(sum_k w_ik^2 v_k (1 - v_k) / n_k),   w_i = J^T e_d / ||g*||

(gradalign_engine/allocation.py). An allocator that knew every v_k exactly would spread the same
total of samples (everything uniform sampled, including children whose v_k is 0 or 1, which it would
skip) to minimise the sum of these errors (a convex problem, solved numerically). As every
error scales as 1/sqrt(samples), the rollouts it needs for uniform's error are
(E_optimal / E_uniform)^2 of uniform's: a lower bound on the ratio that bench_exact_toy.py measures
(no planner knows v; and at nodes with a tiny g* the approximation overstates uniform's error, whose
true value is bounded, so the true bound is if anything higher). Reported for every scored node and
without the nodes whose exact ||g*|| < 0.005.

Usage: .venv/bin/python bench/bound_exact_toy.py [--seeds 24]   (about 3 minutes on 2 CPU cores)
       .venv/bin/python bench/bound_exact_toy.py --smoke   # 1 seed, M = 4: seconds (CI)
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
from exact_toy import MAX_NEW, QUESTION, ExactToy, make_toy_model_dir, scored_nodes, toy_config
from scipy.optimize import minimize

from gradalign_engine import allocation
from gradalign_engine import gradients as G
from gradalign_engine.pipeline import Engine

NAME = "exact_toy_bound"
SMOKE = {"seeds": 1, "continuations": [4]}
TINY_IDEAL_NORM = 0.005
HALF_NORMAL_MEAN = float(np.sqrt(2 / np.pi))  # E|Z| for a standard normal Z


def tree_groups(engine: Engine, exact: ExactToy, tree, method: str = "reverse_kl") -> list[dict]:
    """Per prefix: exact v, visits and the squared cosine gradients w_i^2 of its scored nodes."""
    groups: dict[tuple[int, ...], dict] = {}
    for rec, prefix, support, p, v in scored_nodes(engine, exact, tree, method):
        g = G.ideal_gradient(p, v)
        norm = float(np.linalg.norm(g))
        if G.cosine(g, np.array(rec.distill)) is None:
            continue
        d = np.array(rec.distill) / np.linalg.norm(rec.distill)
        e = d - float(d @ g / norm) * g / norm
        w = (e @ allocation.ideal_jacobian(p)) / norm
        # Children by token id: nodes sharing a prefix list their candidates in different orders.
        group = groups.setdefault(prefix, {"v": {}, "visits": {}, "terms": [], "paid": 0.0})
        for c, v_k in zip(support, v):
            if c.token_id not in group["v"] and not (c.token_id == exact.eos or rec.depth + 1 >= MAX_NEW):
                group["paid"] += c.visits  # sampled continuations (a fixed outcome costs nothing)
            group["v"][c.token_id], group["visits"][c.token_id] = float(v_k), float(c.visits)
        group["terms"].append(
            {"w2": {c.token_id: float(x) for c, x in zip(support, w**2)}, "tiny": norm < TINY_IDEAL_NORM}
        )
    return list(groups.values())


def uniform_and_optimal(groups: list[dict], skip_tiny: bool) -> tuple[float, float, int]:
    """Sum of delta-method errors under uniform's visits and under the best reallocation of them."""
    terms = [(gi, t["w2"]) for gi, g in enumerate(groups) for t in g["terms"] if not (skip_tiny and t["tiny"])]
    # Variables: children with sampling variance (fixed outcomes cost nothing and need nothing).
    open_ = [(gi, k) for gi, g in enumerate(groups) for k, v in g["v"].items() if 0 < v < 1]
    where = {ik: j for j, ik in enumerate(open_)}
    rows = [
        (
            np.array([where[(gi, k)] for k in w2 if (gi, k) in where], int),
            np.array([w2[k] * groups[gi]["v"][k] * (1 - groups[gi]["v"][k]) for k in w2 if (gi, k) in where]),
        )
        for gi, w2 in terms
    ]

    def total(n: np.ndarray) -> float:
        return HALF_NORMAL_MEAN * sum(float(np.sqrt(np.sum(a / n[j]))) for j, a in rows)

    n_uniform = np.array([max(groups[gi]["visits"][k], 1.0) for gi, k in open_])
    if not len(n_uniform):
        return 0.0, 0.0, len(terms)
    # Everything uniform paid for, including children whose success is certain (v = 0 or 1) but
    # only known to be so by sampling them: the clairvoyant allocator may move that spend elsewhere.
    budget = max(sum(g["paid"] for g in groups), n_uniform.sum())
    res = minimize(
        lambda x: total(np.exp(x)),
        np.log(n_uniform),
        method="SLSQP",
        constraints=[{"type": "eq", "fun": lambda x: np.exp(x).sum() / budget - 1.0}],
        options={"maxiter": 500},
    )
    return total(n_uniform), min(total(np.exp(res.x)), total(n_uniform)), len(terms)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=24)
    ap.add_argument("--continuations", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--out", default=None, help="result file (default bench/results/exact_toy_bound.json)")
    args = parse_args(ap, SMOKE, argv)
    started = time.perf_counter()
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_toy_model_dir(Path(tmp) / "toy")
        exact = ExactToy(model_dir)
        for m in args.continuations:
            engine = Engine(toy_config(model_dir, rollouts=8, continuations=m))
            trees = [tree_groups(engine, exact, engine.build_tree(QUESTION, seed=seed)) for seed in range(args.seeds)]
            for skip_tiny in (False, True):
                uni, opt, count = map(np.sum, zip(*(uniform_and_optimal(g, skip_tiny) for g in trees)))
                points.append(
                    {
                        "continuations_per_candidate": m,
                        "nodes": "without tiny g*" if skip_tiny else "all",
                        "scored_nodes": int(count),
                        "uniform_error_delta": float(uni / count),
                        "optimal_error_delta": float(opt / count),
                        "bound_ratio": float((opt / uni) ** 2),
                    }
                )
                print(points[-1], flush=True)
    result = {
        "benchmark": "exact_toy_clairvoyant_bound",
        "seeds": args.seeds,
        "seconds": round(time.perf_counter() - started, 1),
        "points": points,
    }
    write_result(NAME, result, args.smoke, args.out)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
