"""Size and load time of the HTML report (`gradalign report`) for a realistic run, as JSON.

Synthesises canonical records for Q questions x T teachers x M methods with N distinct nodes per
question (16 rollouts, paths of 120-400 tokens, nodes in the exponential depth windows, the root
shared by every rollout, ~8 candidates, prefix token ids and their texts, 10% skipped), aggregates
them with the engine's own ``build_report`` (so the page carries a real report), builds the page,
and opens it in headless chromium (tests/browser_helpers.py):
- size: the page in MB (target < 20 MB for 50 x 3 x 5);
- render_ms: the page's own clock from navigation start to the end of its first render (reading the
  file, parsing the HTML and the JSON blob, decoding, drawing every section; target < 3 s), with the
  time of each step (``timings_ms``), median of the runs;
- click_ms: a click on a token chip until the node panel is drawn;
- open_s: chromium's wall time to load, render and paint the page into a screenshot, less that of an
  empty page (``blank_s``, chromium's own start-up): the cost of opening the page, median of the runs.
The self-test must report no console error.

Usage: .venv/bin/python bench/bench_html_report.py [--questions 50 --teachers 3 --methods 5 --nodes 20 --runs 3]
       .venv/bin/python bench/bench_html_report.py --smoke   # 4 questions, one run: seconds (CI)
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import parse_args, write_result
from browser_helpers import find_chromium, screenshot, selftest

from gradalign_client.html_report import build_html, records_from_html
from gradalign_engine.aggregate import build_report
from gradalign_engine.config import AnalysisConfig
from gradalign_engine.records import AlignmentRecord

NAME = "html_report"
SMOKE = {"questions": 4, "teachers": 2, "methods": 2, "nodes": 8, "runs": 1, "bootstrap": 20}
METHODS = ("forward_kl", "reverse_kl", "jsd", "single_sample", "minillm")
ROLLOUTS, VOCAB = 16, 49152


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p, d = k / n, 1 + z * z / n
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    centre = (p + z * z / (2 * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def _node_shapes(rng: random.Random, paths: list[list[int]], count: int) -> list[tuple[int, int]]:
    """(rollout, depth) of ``count`` distinct nodes: the shared root, then depths in windows [1,3), [3,7), ..."""
    shapes, seen = [(0, 0)], {(0, 0)}
    while len(shapes) < count:
        r = rng.randrange(len(paths))
        window = rng.randrange(1, 8)
        depth = rng.randrange(2**window - 1, 2 ** (window + 1) - 1)
        if depth < len(paths[r]) - 1 and (r, depth) not in seen:
            seen.add((r, depth))
            shapes.append((r, depth))
    return shapes


def _candidates(rng: random.Random, sampled: int, words: list[str]) -> list[dict]:
    ids = [sampled] + [rng.randrange(VOCAB) for _ in range(rng.randint(4, 9))]
    ps = [rng.random() ** 2 for _ in ids]
    cands = []
    for j, tid in enumerate(dict.fromkeys(ids)):
        visits = rng.randint(2, 6)
        ok = rng.randint(0, visits)
        lo, hi = _wilson(ok, visits)
        cands.append(
            {
                "token_id": tid,
                "token_text": words[tid % len(words)],
                "p": ps[j] / 3,
                "q": ps[j] / 3 * rng.uniform(0.5, 1.5),
                "p_renorm": 0.0,
                "q_renorm": 0.0,
                "visits": visits,
                "successes": ok,
                "estimate": ok / visits,
                "ci_low": lo,
                "ci_high": hi,
                "sampled": j == 0,
                "forced": True,
                "in_support": True,
            }
        )
    for key, renorm in (("p", "p_renorm"), ("q", "q_renorm")):
        total = sum(c[key] for c in cands)
        for c in cands:
            c[renorm] = c[key] / total
    return cands


def _unit(rng: random.Random, n: int) -> list[float]:
    v = [rng.gauss(0, 1) for _ in range(n)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


def synth_records(questions: int, teachers: int, methods: int, nodes: int, seed: int = 0) -> tuple[list[dict], list]:
    """Canonical record dicts and tree summaries of a synthetic run (see the module docstring)."""
    rng = random.Random(seed)
    words = [f" w{i}" for i in range(5000)] + ["\n", " the", " answer", " is", "</script>", " <b>"]
    names = [f"teacher_{k}" for k in range(teachers)]
    records, trees = [], []
    for qi in range(questions):
        tree_id = f"{qi:04d}" + "0" * 28
        paths = [[rng.randrange(VOCAB) for _ in range(rng.randint(120, 400))] for _ in range(ROLLOUTS)]
        correct = [rng.random() < 0.4 for _ in paths]
        trees.append({"tree_id": tree_id, "question_id": f"q{qi}", "rollouts": ROLLOUTS, "correct": sum(correct)})
        for r, t in _node_shapes(rng, paths, nodes):
            through = list(range(ROLLOUTS)) if t == 0 else [r]
            outcomes = [correct[x] for x in through]
            cands = _candidates(rng, paths[r][t], words)
            ideal = [x * rng.uniform(0.02, 0.3) for x in _unit(rng, len(cands))]
            node = {
                "question_id": f"q{qi}",
                "tree_id": tree_id,
                "rollout_index": through[0],
                "rollout_correct": outcomes[0] if len(set(outcomes)) == 1 else None,
                "depth": t,
                "path_length": len(paths[through[0]]),
                "normalized_depth": sum(t / len(paths[x]) for x in through) / len(through),
                "sampled_token_id": paths[through[0]][t],
                "prefix_token_ids": paths[through[0]][:t],
                "rollout_indices": through,
                "rollouts_correct": sum(outcomes),
                "ideal": ideal,
                "ideal_norm": math.sqrt(sum(x * x for x in ideal)),
                "schema_version": 2,
                "candidates": cands,
            }
            low_norm = rng.random() < 0.1
            for k, teacher in enumerate(names):
                qs = [c["p"] * rng.uniform(0.5, 1.5) for c in cands]  # each teacher its own q
                mine = [{**c, "q": q, "q_renorm": q / sum(qs)} for c, q in zip(cands, qs)]
                advantage = rng.gauss(0, 0.01)
                diagnostics = {
                    d: rng.uniform(0, 2)
                    for d in ("kl_pq", "kl_qp", "js", "l2", "cos_pq", "student_entropy", "teacher_entropy")
                }
                for method in METHODS[:methods]:
                    distill = [x * 0.1 for x in _unit(rng, len(cands))]
                    cosine = None if low_norm else max(-1.0, min(1.0, rng.gauss(0.05 * (k + 1), 0.35)))
                    records.append(
                        {
                            **node,
                            "teacher": teacher,
                            "method": method,
                            "candidates": [dict(c) for c in mine],
                            "distill": distill,
                            "cosine": cosine,
                            "skip_reason": "ideal_norm_below_threshold" if low_norm else None,
                            "distill_norm": 0.1,
                            "teacher_advantage": advantage,
                            "diagnostics": diagnostics,
                            "demo_source": "dataset" if k else f"rollout:{(r + 1) % ROLLOUTS}",
                            "wrong_source": None,
                            "extra": {},
                        }
                    )
    return records, trees


def _browser(page: Path, blank: Path, runs: int) -> tuple[dict, dict]:
    """Median in-page render and click times, and the wall time to open the page (see the docstring)."""
    results = [selftest(page, timeout=180)[0] for _ in range(runs)]
    for result in results:
        if result.get("errors") or result.get("exception"):
            raise AssertionError(f"the page reported errors: {result.get('errors')} {result.get('exception')}")
    png = page.with_suffix(".png")
    page_s = statistics.median(screenshot(page, png, width=1400, height=1000, timeout=180)[1] for _ in range(runs))
    blank_s = statistics.median(screenshot(blank, png, width=1400, height=1000)[1] for _ in range(runs))
    middle = sorted(results, key=lambda r: r["render_ms"])[len(results) // 2]
    summary = {
        "render_ms": middle["render_ms"],
        "timings_ms": middle["timings"] | middle["first_timings"],  # the first render's sections
        "click_ms": statistics.median(r["click_ms"] for r in results),
        "open_s": round(page_s - blank_s, 2),
        "page_s": round(page_s, 2),
        "blank_s": round(blank_s, 2),
        "runs": runs,
    }
    return summary, results[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--teachers", type=int, default=3)
    parser.add_argument("--methods", type=int, default=5, help=f"the first M of {', '.join(METHODS)}")
    parser.add_argument("--nodes", type=int, default=20, help="distinct nodes per question")
    parser.add_argument("--runs", type=int, default=3, help="chromium loads (the median is reported)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap samples of the report")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/html_report.json)")
    args = parse_args(parser, SMOKE, argv)

    started = time.perf_counter()
    records, trees = synth_records(args.questions, args.teachers, args.methods, args.nodes)
    synth_s = time.perf_counter() - started
    t0 = time.perf_counter()
    report = build_report(
        [AlignmentRecord.from_dict(r) for r in records], AnalysisConfig(bootstrap_samples=args.bootstrap), trees=trees
    )
    report_s = time.perf_counter() - t0
    # The texts of every prefix token, as analyze can pass them (write_html's token_texts): the largest page.
    token_texts = {i: f" w{i % 5000}" for r in records for i in r["prefix_token_ids"]}
    t0 = time.perf_counter()
    summary = {"report": report.to_dict(), "trees": trees}
    page_html = build_html(records, summary, title="gradalign report: benchmark", token_texts=token_texts)
    build_s = time.perf_counter() - t0
    assert records_from_html(page_html) == records, "the page does not round-trip its records"
    payload = {
        "benchmark": NAME,
        "questions": args.questions,
        "teachers": args.teachers,
        "methods": args.methods,
        "nodes_per_question": args.nodes,
        "records": len(records),
        "size_mb": round(len(page_html.encode()) / 1e6, 2),
        "synthesis_s": round(synth_s, 2),
        "report_s": round(report_s, 2),
        "build_html_s": round(build_s, 2),
    }
    if find_chromium() is None:
        print("bench_html_report: no chromium binary: size measured, load time skipped", file=sys.stderr)
        payload["browser"] = None
    else:
        with tempfile.TemporaryDirectory(prefix="gradalign-bench-html-") as tmp:
            page, blank = Path(tmp) / "report.html", Path(tmp) / "blank.html"
            page.write_text(page_html, encoding="utf-8")
            blank.write_text("<!DOCTYPE html><title>blank</title>", encoding="utf-8")
            payload["browser"], first = _browser(page, blank, args.runs)
        payload["chips_shown"] = first["chips"]
    payload["seconds"] = round(time.perf_counter() - started, 1)
    print(payload, file=sys.stderr)
    write_result(NAME, payload, args.smoke, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
