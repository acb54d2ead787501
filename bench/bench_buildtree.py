"""BuildTree throughput and prefix sharing, measured side by side with raw batched `generate` and the ceilings.

Reports, as JSON (bench/results/buildtree.json):
- ceilings: the matmul peak of this CPU in float32 and in each run's dtype (GFLOP/s of square
  matmuls, measured here before and after the workloads, the higher kept), and the model's FLOPs per
  token (2 x parameters), so every throughput is also a fraction of each ceiling;
- per dtype (``--dtype float32,bfloat16`` runs both workloads in this one run, one after the other):
  - raw: HF `model.generate` (sampling, copies of one prompt, same max_new_tokens) generated tokens
    per second at batch 8, 32 and 128 and at BuildTree's own mean batch (rows per forward, measured),
    on the same model and dtype, run just before and after BuildTree;
  - buildtree: generated tokens (rollouts + continuations) per second of whole `Engine.build_tree`
    calls (rollouts, scoring passes, node choice, continuations, verification all included);
  - ratio = buildtree / raw tokens per second at the matched batch (and at each measured batch);
  - forwarded: the student's forwarded token positions during BuildTree vs the tree's unique tokens
    (distinct prefixes of prompt + completions, the prompt counted once), after removing the teacher
    passes (teacher prompt + rollout per teacher per rollout), which are reported separately;
- exactness, for every dtype other than float32: the student's next-token distributions in that
  dtype vs float32 at every token of the first tree's rollouts (largest |p - p_float32|, mean KL).

Usage: .venv/bin/python bench/bench_buildtree.py [--questions 2] [--rollouts 8] [--max-new-tokens 64]
           [--dtype float32[,bfloat16]] [--tiny DIR]
       .venv/bin/python bench/bench_buildtree.py --smoke   # tiny random model, seconds (CI)
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
from _common import matmul_flops, parse_args, result_path, tiny_model_dir, write_result

from gradalign_engine.backends.hf import HFBackend
from gradalign_engine.config import ModelSpec, PromptConfig, RolloutConfig, RunConfig, SamplingConfig, TeacherSpec
from gradalign_engine.data import bundled_dataset_path, load_questions
from gradalign_engine.pipeline import Engine
from gradalign_engine.prompts import render_prompt

NAME = "buildtree"
SMOKE = {
    "questions": 1,
    "rollouts": 4,
    "max_new_tokens": 12,
    "continuations": 2,
    "nodes_per_path": 2,
    "batches": "2,4",
    "dtype": "float32,bfloat16",
}


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


def build_config(args: argparse.Namespace, model: str, dtype: str | None = None) -> RunConfig:
    return RunConfig(
        student=ModelSpec(model=model, dtype=dtype or args.dtype.split(",")[0], device="cpu"),
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


def measure_tree(engine: Engine, question) -> tuple[dict, float, object]:
    """One timed `Engine.build_tree`: its record (forwarded and unique tokens), seconds, tree."""
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
    return record, seconds, tree


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--continuations", type=int, default=4)
    ap.add_argument("--nodes-per-path", type=int, default=4)
    ap.add_argument(
        "--dtype",
        default="float32",
        help="float32, bfloat16, or both comma-separated (each run's ceiling is measured in its dtype, float32 always)",
    )
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


def run_dtype(args: argparse.Namespace, model: str, dtype: str, questions) -> tuple[dict, object]:
    """The raw `generate` sweeps and the timed trees in one dtype; returns (its record, its first tree)."""
    config = build_config(args, model, dtype)
    engine = Engine(config)
    backend = engine.student
    prompt0 = render_prompt(backend.tokenizer, questions[0], config.prompt)
    temperature = config.sampling.temperature
    flops_per_token = 2 * sum(p.numel() for p in backend.model.parameters())
    batches = [int(b) for b in args.batches.split(",")]
    raw_before = raw_sweep(backend, prompt0, batches, args, temperature)
    trees, first_tree, built_seconds = [], None, 0.0
    for q in questions:
        record, seconds, tree = measure_tree(engine, q)
        trees.append(record)
        first_tree = first_tree or tree
        built_seconds += seconds
        backend.clear_prefix_cache()
    keys = ("generated_tokens", "student_forwarded", "teacher_forwarded", "unique_tokens", "forward_calls")
    built = {k: sum(t[k] for t in trees) for k in keys}
    matched = max(1, round(built["generated_tokens"] / max(built["forward_calls"], 1)))
    raw_matched = raw_generate_tps(backend, prompt0, matched, args.max_new_tokens, temperature, 1)
    raw_after = raw_sweep(backend, prompt0, batches, args, temperature)
    engine.close()
    raw = {b: _combined(raw_before[b], raw_after[b]) for b in raw_before}
    tree_tps = built["generated_tokens"] / built_seconds
    record = {
        "dtype": dtype,
        "flops_per_token": flops_per_token,
        "raw_generate": {"by_batch": raw, "matched_batch": matched, "matched": raw_matched},
        "buildtree": {
            "generated_tokens": built["generated_tokens"],
            "seconds": round(built_seconds, 3),
            **{k: built[k] for k in keys[1:]},
            "tokens_per_second": tree_tps,
            "positions_per_second": (built["student_forwarded"] + built["teacher_forwarded"]) / built_seconds,
            "mean_rows_per_forward": built["generated_tokens"] / max(built["forward_calls"], 1),
        },
        "throughput_ratio_matched": tree_tps / raw_matched["tokens_per_second"],
        "throughput_ratio_by_batch": {b: tree_tps / r["tokens_per_second"] for b, r in raw.items()},
        "forwarded_over_unique": built["student_forwarded"] / built["unique_tokens"],
        "trees": trees,
    }
    return record, first_tree


def add_fractions(record: dict, ceilings: dict, flops_per_token: int) -> None:
    """Each throughput as a fraction of the run's own-dtype ceiling and of the float32 ceiling."""
    built = record["buildtree"]
    for name, ceiling in (("own_dtype", ceilings[record["dtype"]]), ("float32", ceilings["float32"])):
        gflops = flops_per_token / 1e9 / ceiling
        built[f"fraction_of_{name}_ceiling_all_positions"] = built["positions_per_second"] * gflops
        built[f"fraction_of_{name}_ceiling_generated"] = built["tokens_per_second"] * gflops
        record[f"raw_fraction_of_{name}_ceiling"] = {
            b: r["tokens_per_second"] * gflops for b, r in record["raw_generate"]["by_batch"].items()
        }


def exactness(model: str, dtype: str, tree) -> dict:
    """``dtype`` vs float32 next-token distributions of the student at every token of ``tree``'s rollouts."""
    contexts = [tree.prompt_ids] * len(tree.rollouts)
    completions = [r.tokens for r in tree.rollouts]
    logp = {}
    for d in ("float32", dtype):
        backend = HFBackend(ModelSpec(model=model, dtype=d, device="cpu"))
        logp[d] = torch.cat(backend.score(contexts, completions))
        backend.close()
    p32, p = logp["float32"].exp(), logp[dtype].exp()
    kl = (p32 * (logp["float32"] - logp[dtype])).sum(-1)
    return {
        "tokens": int(p32.shape[0]),
        "max_abs_dp": float((p - p32).abs().max()),
        "mean_kl_float32_to_dtype": float(kl.mean()),
        "max_kl_float32_to_dtype": float(kl.max()),
    }


def ceiling_fractions(record: dict) -> str:
    built, dtype = record["buildtree"], record["dtype"]
    own = f"{built['fraction_of_own_dtype_ceiling_all_positions']:.0%} of the {dtype} ceiling"
    if dtype == "float32":
        return own
    return f"{own}, {built['fraction_of_float32_ceiling_all_positions']:.0%} of float32's"


def main(argv=None) -> int:
    args = parse(argv)
    model = args.tiny or "smollm2-135m"
    dtypes = args.dtype.split(",")
    questions = load_questions(bundled_dataset_path("demo"), limit=args.questions)
    square, seconds = (256, 0.5) if args.smoke else (1024, 2.0)
    ceiling_dtypes = list(dict.fromkeys(["float32", *dtypes]))
    # Measured before and after the workloads: this host's peak drifts; the higher one is the ceiling.
    before = {d: matmul_flops(d, square, seconds) / 1e9 for d in ceiling_dtypes}
    runs = [run_dtype(args, model, d, questions) for d in dtypes]
    after = {d: matmul_flops(d, square, seconds) / 1e9 for d in ceiling_dtypes}
    ceilings = {d: max(before[d], after[d]) for d in ceiling_dtypes}
    flops_per_token = runs[0][0]["flops_per_token"]
    for record, _ in runs:
        add_fractions(record, ceilings, flops_per_token)
    first_tree = runs[0][1]
    result = {
        "benchmark": "buildtree_vs_raw_generate",
        "model": model,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "settings": {k: v for k, v in vars(args).items() if k != "smoke"},
        "ceilings": {
            d: {"matmul_gflops": ceilings[d], "matmul_gflops_before": before[d], "matmul_gflops_after": after[d]}
            for d in ceiling_dtypes
        },
        "flops_per_token": flops_per_token,
        "runs": {record["dtype"]: record for record, _ in runs},
        "exactness_vs_float32": {d: exactness(model, d, first_tree) for d in dtypes if d != "float32"},
    }
    write_result(NAME, result, args.smoke, args.out)
    print("ceilings " + ", ".join(f"{d} {c:.0f} GFLOP/s" for d, c in ceilings.items()), end="")
    print(f" ({flops_per_token / 1e9:.2f} GFLOP/token)")
    for record, _ in runs:
        built, matched = record["buildtree"], record["raw_generate"]["matched"]
        print(
            f"{record['dtype']}: BuildTree {built['tokens_per_second']:.1f} tok/s "
            f"({ceiling_fractions(record)}, counting every forwarded position) | raw generate at the matched "
            f"batch {record['raw_generate']['matched_batch']}: "
            f"{matched['tokens_per_second']:.1f} tok/s (ratio {record['throughput_ratio_matched']:.2f}) | by batch "
            + ", ".join(f"{b}: {r['tokens_per_second']:.0f}" for b, r in record["raw_generate"]["by_batch"].items())
        )
    for d, e in result["exactness_vs_float32"].items():
        print(
            f"{d} vs float32 on {e['tokens']} rollout tokens: max |dp| {e['max_abs_dp']:.2e}, "
            f"mean KL {e['mean_kl_float32_to_dtype']:.2e}"
        )
    return 0


def _combined(before: dict, after: dict) -> dict:
    tokens, seconds = before["generated_tokens"] + after["generated_tokens"], before["seconds"] + after["seconds"]
    return {"generated_tokens": tokens, "seconds": round(seconds, 3), "tokens_per_second": tokens / seconds}


if __name__ == "__main__":
    sys.exit(main())
