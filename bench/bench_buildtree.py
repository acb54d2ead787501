"""BuildTree throughput and prefix sharing, measured side by side with raw batched `generate` and the ceiling.

Reports, as JSON (bench/results/buildtree.json):
- ceiling: the matmul peak of this CPU in the run's dtype (GFLOP/s of square matmuls, measured here
  before and after the workload, the higher kept), and the model's FLOPs per token (2 x parameters),
  so every throughput is also a fraction of it;
- raw: HF `model.generate` (sampling, copies of one prompt, same max_new_tokens) generated tokens per
  second at batch 8, 32 and 128 and at BuildTree's own mean batch (rows per forward, measured), on the
  same model and dtype, run just before and after BuildTree;
- buildtree: generated tokens (rollouts + continuations) per second of whole `Engine.build_tree`
  calls (rollouts, scoring passes, node choice, continuations, verification all included);
- ratio = buildtree / raw tokens per second at the matched batch (and at each measured batch);
- forwarded: the student's forwarded token positions during BuildTree vs the tree's unique tokens
  (distinct prefixes of prompt + completions, the prompt counted once), after removing the teacher
  passes (teacher prompt + rollout per teacher per rollout), which are reported separately.

Usage: .venv/bin/python bench/bench_buildtree.py [--questions 2] [--rollouts 8] [--max-new-tokens 64] [--tiny DIR]
       .venv/bin/python bench/bench_buildtree.py --smoke   # tiny random model, seconds (CI)
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
from _common import matmul_flops, parse_args, result_path, tiny_model_dir, write_result

from gradalign_engine.config import ModelSpec, PromptConfig, RolloutConfig, RunConfig, SamplingConfig, TeacherSpec
from gradalign_engine.data import bundled_dataset_path, load_questions
from gradalign_engine.pipeline import Engine
from gradalign_engine.prompts import render_prompt

NAME = "buildtree"
SMOKE = {"questions": 1, "rollouts": 4, "max_new_tokens": 12, "continuations": 2, "nodes_per_path": 2, "batches": "2,4"}


def unique_tokens(tree) -> int:
    """Distinct prefixes of prompt + completion over every sequence of the tree (prompt once)."""
    root: dict = {}
    count = 0
    seqs = [r.tokens for r in tree.rollouts] + [
        c.full_tokens(tree.rollouts[c.rollout_index]) for c in tree.continuations
    ]
    for seq in seqs:
        node = root
        for t in seq:
            if t not in node:
                node[t] = {}
                count += 1
            node = node[t]
    return len(tree.prompt_ids) + count


def raw_generate_tps(backend, prompt: list[int], rows: int, max_new: int, temperature: float, repeats: int = 2) -> dict:
    model = backend.model
    ids = torch.tensor([prompt] * rows, device=backend.device)
    gen_tokens, seconds = 0, 0.0
    for rep in range(repeats):
        torch.manual_seed(rep)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new,
                pad_token_id=backend.pad_id,
            )
        seconds += time.perf_counter() - t0
        new = out[:, ids.shape[1] :]
        eos = list(backend.eos_token_ids)
        for row in new.tolist():
            n = len(row)
            for j, t in enumerate(row):
                if t in eos:
                    n = j + 1
                    break
            gen_tokens += n
    return {"generated_tokens": gen_tokens, "seconds": round(seconds, 3), "tokens_per_second": gen_tokens / seconds}


def build_config(args: argparse.Namespace, model: str) -> RunConfig:
    return RunConfig(
        student=ModelSpec(model=model, dtype=args.dtype, device="cpu"),
        teachers=(TeacherSpec(name="correct_demo", context="correct_demo"),),
        sampling=SamplingConfig(max_new_tokens=args.max_new_tokens),
        rollouts=RolloutConfig(
            num_rollouts=args.rollouts,
            nodes_per_window=1,
            nodes_per_path=args.nodes_per_path,
            candidate_top_k=3,
            continuations=args.continuations,
        ),
        prompt=PromptConfig(),
    )


def measure_tree(engine: Engine, question) -> tuple[dict, float]:
    """One timed `Engine.build_tree`: its record (forwarded positions, student / teacher; unique tokens) and seconds."""
    backend = engine.student
    before = backend.counters.snapshot()
    t0 = time.perf_counter()
    tree = engine.build_tree(question)
    seconds = time.perf_counter() - t0
    after = backend.counters.snapshot()
    teacher = engine.teachers["correct_demo"]
    teacher_tokens = 0
    for r in tree.rollouts:
        ids, _ = teacher.prompt_ids(tree, {r.index})
        if ids is not None and r.tokens:
            teacher_tokens += len(ids) + len(r.tokens)
    forwarded = after["forwarded_tokens"] - before["forwarded_tokens"]
    record = {
        "question": question.id,
        "seconds": round(seconds, 3),
        "generated_tokens": after["generated_tokens"] - before["generated_tokens"],
        "student_forwarded": forwarded - teacher_tokens,
        "forward_calls": after["forward_calls"] - before["forward_calls"],
        "teacher_forwarded": teacher_tokens,
        "unique_tokens": unique_tokens(tree),
        "rollouts": len(tree.rollouts),
        "continuations": len(tree.continuations),
        "nodes": len(tree.nodes),
        "correct": tree.summary.correct,
    }
    return record, seconds


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--continuations", type=int, default=4)
    ap.add_argument("--nodes-per-path", type=int, default=4)
    ap.add_argument("--dtype", default="float32", help="float32 or bfloat16 (the ceiling is measured in the same)")
    ap.add_argument("--batches", default="8,32,128", help="raw generate batch sizes to compare with")
    ap.add_argument("--tiny", default=None, help="a tiny model directory instead of SmolLM2 (smoke runs)")
    ap.add_argument("--out", default=None, help="result file (default bench/results/buildtree.json)")
    args = parse_args(ap, SMOKE, argv)
    args.out = args.out or str(result_path(NAME, args.smoke))
    if args.smoke and not args.tiny:
        args.tiny = str(tiny_model_dir())
    return args


def raw_sweep(backend, prompt, batches, args, temperature) -> dict:
    return {str(b): raw_generate_tps(backend, prompt, b, args.max_new_tokens, temperature, repeats=1) for b in batches}


def main(argv=None) -> int:
    args = parse(argv)
    model = args.tiny or "smollm2-135m"
    config = build_config(args, model)
    engine = Engine(config)
    backend = engine.student
    questions = load_questions(bundled_dataset_path("demo"), limit=args.questions)
    prompt0 = render_prompt(backend.tokenizer, questions[0], config.prompt)
    square, seconds = (256, 0.5) if args.smoke else (1024, 2.0)
    # Measured before and after the workload: this host's peak drifts; the higher one is the ceiling.
    ceiling_before = matmul_flops(args.dtype, square, seconds) / 1e9
    flops_per_token = 2 * sum(p.numel() for p in backend.model.parameters())

    batches = [int(b) for b in args.batches.split(",")]
    raw_before = raw_sweep(backend, prompt0, batches, args, config.sampling.temperature)
    trees, built_seconds = [], 0.0
    for q in questions:
        record, seconds = measure_tree(engine, q)
        trees.append(record)
        built_seconds += seconds
        backend.clear_prefix_cache()
    keys = ("generated_tokens", "student_forwarded", "teacher_forwarded", "unique_tokens", "forward_calls")
    built = {k: sum(t[k] for t in trees) for k in keys}
    matched = max(1, round(built["generated_tokens"] / max(built["forward_calls"], 1)))
    raw_matched = raw_generate_tps(backend, prompt0, matched, args.max_new_tokens, config.sampling.temperature, 1)
    raw_after = raw_sweep(backend, prompt0, batches, args, config.sampling.temperature)
    engine.close()
    ceiling_after = matmul_flops(args.dtype, square, seconds) / 1e9
    ceiling = max(ceiling_before, ceiling_after)

    raw = {b: _combined(raw_before[b], raw_after[b]) for b in raw_before}
    tree_tps = built["generated_tokens"] / built_seconds
    positions_per_s = (built["student_forwarded"] + built["teacher_forwarded"]) / built_seconds
    result = {
        "benchmark": "buildtree_vs_raw_generate",
        "model": model,
        "dtype": args.dtype,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "settings": {k: v for k, v in vars(args).items() if k != "smoke"},
        "ceiling": {
            "matmul_gflops": ceiling,
            "matmul_gflops_before": ceiling_before,
            "matmul_gflops_after": ceiling_after,
            "flops_per_token": flops_per_token,
        },
        "raw_generate": {"by_batch": raw, "matched_batch": matched, "matched": raw_matched},
        "buildtree": {
            "generated_tokens": built["generated_tokens"],
            "seconds": round(built_seconds, 3),
            **{k: built[k] for k in keys[1:]},
            "tokens_per_second": tree_tps,
            "mean_rows_per_forward": built["generated_tokens"] / max(built["forward_calls"], 1),
            "fraction_of_ceiling_generated": tree_tps * flops_per_token / 1e9 / ceiling,
            "fraction_of_ceiling_all_positions": positions_per_s * flops_per_token / 1e9 / ceiling,
        },
        "throughput_ratio_matched": tree_tps / raw_matched["tokens_per_second"],
        "throughput_ratio_by_batch": {b: tree_tps / r["tokens_per_second"] for b, r in raw.items()},
        "raw_fraction_of_ceiling": {
            b: r["tokens_per_second"] * flops_per_token / 1e9 / ceiling for b, r in raw.items()
        },
        "forwarded_over_unique": built["student_forwarded"] / built["unique_tokens"],
        "trees": trees,
    }
    write_result(NAME, result, args.smoke, args.out)
    print(
        f"ceiling {ceiling:.0f} GFLOP/s ({flops_per_token / 1e9:.2f} GFLOP/token) | BuildTree {tree_tps:.1f} tok/s "
        f"({result['buildtree']['fraction_of_ceiling_all_positions']:.0%} of the ceiling counting every forwarded "
        f"position) | raw generate at the matched batch {matched}: {raw_matched['tokens_per_second']:.1f} tok/s "
        f"(ratio {result['throughput_ratio_matched']:.2f}) | by batch "
        + ", ".join(f"{b}: {r['tokens_per_second']:.0f}" for b, r in raw.items())
    )
    return 0


def _combined(before: dict, after: dict) -> dict:
    tokens, seconds = before["generated_tokens"] + after["generated_tokens"], before["seconds"] + after["seconds"]
    return {"generated_tokens": tokens, "seconds": round(seconds, 3), "tokens_per_second": tokens / seconds}


if __name__ == "__main__":
    sys.exit(main())
