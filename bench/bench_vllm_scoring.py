"""Benchmark: exact scoring on the vLLM backend, the transformers twin against vLLM's own logits, side by side.

The same workload (``--completions`` completions of ``--completion-tokens`` tokens after one
``--prompt-tokens``-token prompt) is scored by ``VLLMBackend.score`` twice, each side in its own
fresh process: ``scoring="twin"`` (a transformers copy of the weights beside the vLLM engine) and
``scoring="vllm"`` (the default: full-vocabulary prompt scores from the engine itself). Reported per
side: peak resident memory of the process (``ru_maxrss``, after loading and after scoring), seconds
to score the workload (after a warm-up call that also loads the twin), tokens forwarded, and the
largest differences in probability and log-probability from the HF backend, which each side loads
after its measurements. The vLLM side also times ``torch.topk`` over the vocabulary for as many rows
as it scored: vLLM sorts every scored row over the full vocabulary, the part of its cost a CPU pays
most for. The JSON goes to ``bench/results/vllm_scoring.json``.

Run it in the vLLM virtual environment (``bash scripts/setup_vllm_venv.sh`` first)::

    .venv-vllm/bin/python bench/bench_vllm_scoring.py            # SmolLM2-135M, 32 x 48 tokens, a few minutes
    .venv-vllm/bin/python bench/bench_vllm_scoring.py --prompt-tokens 400 \
        --out bench/results/vllm_scoring_long_prompt.json        # a teacher-length context, read from the cache
    .venv-vllm/bin/python bench/bench_vllm_scoring.py --smoke    # the tiny random test model (CI)

Without vllm installed it prints that it skips and exits 0 (bench/run_smoke.sh runs in the main venv).
Completions are seeded random non-special tokens: scoring cost and exactness do not depend on them
making sense. On a small shared machine the seconds swing with other load; the JSON records the load
average.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, add_model_arguments, parse_args, tiny_model_dir, write_result

NAME = "vllm_scoring"
SIDES = ("twin", "vllm")
SMOKE = {"tiny": True, "completions": 4, "completion_tokens": 8, "prompt_tokens": 12}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(p)  # --model, --tiny, --kv-gib, --dtype, --seed
    p.add_argument("--completions", type=int, default=32, help="completions scored (default 32)")
    p.add_argument("--completion-tokens", type=int, default=48, help="tokens per completion (default 48)")
    p.add_argument("--prompt-tokens", type=int, default=60, help="tokens of the shared prompt (default 60)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=None, help="result file (default bench/results/vllm_scoring.json)")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # internal: run one side
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    return parse_args(p, SMOKE, argv)


# ---------------------------------------------------------------------------------------- one side (child process)
def peak_rss_mib() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def max_differences(got, want) -> dict:
    """Largest |delta p| and |delta log p| over every row and vocabulary entry."""
    dp = max((g.exp() - w.exp()).abs().max().item() for g, w in zip(got, want))
    dlogp = max((g - w).abs().max().item() for g, w in zip(got, want))
    return {"max_abs_dp": dp, "max_abs_dlogp": dlogp}


def topk_seconds(rows: int, vocab: int) -> float:
    """Seconds of torch.topk over the whole vocabulary for ``rows`` random rows (in slices of 256)."""
    import torch

    total = 0.0
    for start in range(0, rows, 256):
        x = torch.randn(min(256, rows - start), vocab)
        t0 = time.perf_counter()
        torch.topk(x, vocab, dim=-1)
        total += time.perf_counter() - t0
    return round(total, 2)


def run_side(args: argparse.Namespace) -> dict:
    """Score the workload with one scoring mode in this process; return its measurements."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from gradalign_engine.backends.hf import HFBackend
    from gradalign_engine.backends.vllm_backend import VLLMBackend
    from gradalign_engine.config import ModelSpec

    work = json.loads(Path(args.workload).read_text())
    prompt, completions = work["prompt"], work["completions"]
    spec = ModelSpec(
        model=args.model_dir,
        backend="vllm",
        device="cpu",
        dtype=args.dtype,
        vllm_kv_cache_bytes=int(args.kv_gib * 2**30),
    )
    t0 = time.perf_counter()
    backend = VLLMBackend(spec, scoring=args.side)
    load_s, rss_loaded = time.perf_counter() - t0, peak_rss_mib()
    t0 = time.perf_counter()
    backend.score([prompt], [completions[0][:4]])  # first call: the twin side loads its transformers copy here
    warm_s = time.perf_counter() - t0
    before = backend.counters.snapshot()
    t0 = time.perf_counter()
    got = backend.score([prompt] * len(completions), completions, temperature=args.temperature)
    score_s = time.perf_counter() - t0
    after = backend.counters.snapshot()
    result = {
        "scoring": args.side,
        "load_s": round(load_s, 2),
        "warm_s": round(warm_s, 2),
        "score_s": round(score_s, 2),
        "peak_rss_after_load_mib": rss_loaded,
        "peak_rss_mib": peak_rss_mib(),
        "twin_loaded": backend.twin_loaded,
        "forwarded_tokens": after["forwarded_tokens"] - before["forwarded_tokens"],
        "scored_tokens": after["scored_tokens"] - before["scored_tokens"],
    }
    vocab = backend.vocab_size
    backend.close()
    if args.side == "vllm":  # the rows vLLM sorted: one per computed prompt position but the last of each request
        result["vllm_sorted_rows"] = result["forwarded_tokens"] - len(completions)
        result["topk_s_for_those_rows"] = topk_seconds(result["vllm_sorted_rows"], vocab)
    reference = HFBackend(ModelSpec(model=args.model_dir, device="cpu", dtype=args.dtype))
    want = reference.score([prompt] * len(completions), completions, temperature=args.temperature)
    result.update(max_differences(got, want))
    return result


# ---------------------------------------------------------------------------------------- the parent
def resolve(args: argparse.Namespace) -> tuple[str, str]:
    """The model directory both sides load, and its name."""
    if args.tiny:
        return str(tiny_model_dir()), "tiny-random-llama"
    from gradalign_engine.models import resolve_model

    resolved = resolve_model(args.model)  # converts a built-in once, before either side runs
    return str(resolved.path), resolved.name


def make_workload(args: argparse.Namespace, model_dir: str) -> dict:
    """One prompt of exactly ``--prompt-tokens`` tokens (demo questions, chat-templated) and seeded completions."""
    from transformers import AutoTokenizer

    from gradalign_engine.data import bundled_dataset_path, load_questions

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    questions = " ".join(q.question for q in load_questions(bundled_dataset_path("demo")))
    text = questions
    while True:  # repeated as often as a long prompt needs (a teacher's demonstrations are that long)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        if not isinstance(prompt, list):  # transformers may return a BatchEncoding
            prompt = list(prompt["input_ids"])
        if len(prompt) >= args.prompt_tokens:
            break
        text += " " + questions
    special = set(tokenizer.all_special_ids)
    words = [t for t in range(len(tokenizer)) if t not in special]
    rng = random.Random(args.seed)
    completions = [[rng.choice(words) for _ in range(args.completion_tokens)] for _ in range(args.completions)]
    return {"prompt": prompt[: args.prompt_tokens], "completions": completions}


def spawn_side(args: argparse.Namespace, side: str, model_dir: str, workload: Path) -> dict | None:
    """Run one side in a fresh process; its measurements, or None (its stderr shown) when it failed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--model-dir", model_dir]
    cmd += ["--workload", str(workload), "--temperature", str(args.temperature)]
    cmd += ["--kv-gib", str(args.kv_gib), "--dtype", args.dtype]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        print(f"[bench] {side} failed (exit {proc.returncode})", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(args: argparse.Namespace, model_name: str, work: dict, sides: dict) -> dict:
    import torch
    import transformers
    import vllm

    twin, own = sides["twin"], sides["vllm"]
    return {
        "benchmark": NAME,
        "model": model_name,
        "workload": {
            "prompt_tokens": len(work["prompt"]),
            "completions": len(work["completions"]),
            "completion_tokens": args.completion_tokens,
            "temperature": args.temperature,
            "dtype": args.dtype,
            "kv_gib": args.kv_gib,
            "seed": args.seed,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "vllm": vllm.__version__,
        },
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "sides": sides,
        "vllm_over_twin": {
            "score_s": round(own["score_s"] / twin["score_s"], 3) if twin["score_s"] else None,
            "peak_rss_mib": round(own["peak_rss_mib"] / twin["peak_rss_mib"], 3),
            "peak_rss_saved_mib": round(twin["peak_rss_mib"] - own["peak_rss_mib"], 1),
        },
    }


def main(argv=None) -> int:
    args = parse(argv)
    if args.side:
        print(json.dumps(run_side(args)))
        return 0
    if importlib.util.find_spec("vllm") is None:
        print(
            f"[bench] SKIP bench_vllm_scoring: vllm is not importable by {sys.executable} "
            "(run it with .venv-vllm/bin/python; bash scripts/setup_vllm_venv.sh creates that venv)"
        )
        return 0
    model_dir, model_name = resolve(args)
    work = make_workload(args, model_dir)
    sides = {}
    with tempfile.TemporaryDirectory(prefix="gradalign-bench-") as tmp:
        workload = Path(tmp) / "workload.json"
        workload.write_text(json.dumps(work))
        for side in SIDES:
            print(f"[bench] {side}: scoring {args.completions} x {args.completion_tokens} tokens ...", file=sys.stderr)
            sides[side] = spawn_side(args, side, model_dir, workload)
            if sides[side] is None:
                return 1
            print(f"[bench] {side}: {json.dumps(sides[side])}", file=sys.stderr, flush=True)
    result = summarize(args, model_name, work, sides)
    write_result(NAME, result, args.smoke, args.out)
    print(json.dumps({"model": model_name, **result["vllm_over_twin"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
