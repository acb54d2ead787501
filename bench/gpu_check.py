"""The GPU check: what a lent accelerator gives gradalign, measured in one run, with no downloads.

Random-weight models are built from configs with the shapes of Qwen3-1.7B (student) and Qwen3-8B
(teacher), with a synthetic word-level tokenizer of Qwen3's vocabulary size, so nothing is fetched.
In one run it measures:
1. the bf16 matmul peak of the device (the ceiling);
2. student rollout tokens/s on the same tree workload with the HF backend and, when vLLM is
   importable, the vLLM backend;
3. teacher-scoring tokens/s of the 8B teacher (HF backend, exact full-vocabulary scoring) and its
   fraction of the measured peak (2 x parameters FLOPs per token);
4. the wall time of one question's tree at 2k-token rollouts with 3 teachers (the 8B teacher and two
   self-distillation contexts), built and scored.
Every step has a time budget; a step that cannot finish in it is recorded as such. Results go to
bench/results/gpu_check.json (``--tiny``: a CPU rehearsal with tiny shapes, bench/results/smoke/).

Usage: bash bench/gpu_check.sh            # on the GPU host (needs torch with CUDA; vLLM optional)
       bash bench/gpu_check.sh --tiny     # rehearsal on this CPU, tiny shapes, a minute or two
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from _common import matmul_flops, result_path, sync, write_result

NAME = "gpu_check"
QWEN3_1_7B = dict(
    hidden_size=2048,
    intermediate_size=6144,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    tie_word_embeddings=True,
)
QWEN3_8B = dict(
    hidden_size=4096,
    intermediate_size=12288,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    tie_word_embeddings=False,
)
QWEN3_VOCAB = 151936
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    tie_word_embeddings=True,
)
TINY_TEACHER = dict(TINY, hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=3)


def tokenizer_dir(path: Path, vocab_size: int) -> Path:
    """A word-level tokenizer whose words are the numbers 0..N: random models write numbers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + [str(i) for i in range(vocab_size - len(specials))])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        additional_special_tokens=specials[3:],
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    tokenizer.save_pretrained(path)
    return path


def model_dir(path: Path, shape: dict, vocab_size: int, dtype: str, seed: int, device: str) -> Path:
    """Random Qwen3 weights of ``shape`` saved with the shared tokenizer.

    Built directly on ``device`` in ``dtype``: initialising 8B parameters in float32 on the host would
    take minutes of the lease.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab_size, max_position_embeddings=8192, eos_token_id=1, pad_token_id=0, bos_token_id=None, **shape
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(path)
    tokenizer_dir(path, vocab_size)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return path


def matmul_peak(device: str, dtype: str, n: int, seconds: float = 3.0) -> dict:
    """TFLOP/s of n x n matmuls in ``dtype`` on ``device`` (best of repeated timed batches of 8)."""
    return {"dtype": dtype, "n": n, "tflops": matmul_flops(dtype, n, seconds, device=device, repeats=8) / 1e12}


def question():
    from gradalign_engine.data import Question

    return Question(
        id="g1",
        question="what is 40 + 2 ?",
        answer="42",
        verifier="regex",
        solution="40 + 2 = 42 . the answer is 42",
        extra={"verifier_options": {"pattern": r"\b42\b"}},
    )


def run_config(student: Path, teacher: Path | None, backend: str, args, teachers: bool):
    from gradalign_engine.config import AnalysisConfig, ModelSpec, RolloutConfig, RunConfig, SamplingConfig, TeacherSpec

    spec = dict(dtype=args.dtype, device=args.device, vllm_kv_cache_bytes=args.kv_cache_bytes)
    specs = ()
    if teachers:
        specs = (
            TeacherSpec(name="correct_demo", context="correct_demo"),
            TeacherSpec(name="summary", context="summary"),
        )
        if teacher is not None:
            specs += (TeacherSpec(name="big", kind="external", model=ModelSpec(model=str(teacher), **spec)),)
    return RunConfig(
        student=ModelSpec(model=str(student), backend=backend, **spec),
        teachers=specs,
        sampling=SamplingConfig(max_new_tokens=args.max_new_tokens),
        rollouts=RolloutConfig(
            num_rollouts=args.rollouts,
            nodes_per_window=1,
            nodes_per_path=args.nodes_per_path,
            candidate_top_k=2,
            continuations=args.continuations,
        ),
        analysis=AnalysisConfig(methods=("forward_kl", "jsd"), bootstrap_samples=100),
    )


def rollout_throughput(student: Path, backend: str, args) -> dict:
    """Student tokens/s of whole trees (no teachers: the sampling workload alone) with one backend."""
    from gradalign_engine.pipeline import Engine

    engine = Engine(run_config(student, None, backend, args, teachers=False))
    try:
        engine.build_tree(question(), seed=99)  # warm-up: kernels, caches
        before, t0 = engine.student.counters.snapshot()["generated_tokens"], time.perf_counter()
        for seed in range(args.trees):
            engine.build_tree(question(), seed=seed)
        seconds = time.perf_counter() - t0
        generated = engine.student.counters.snapshot()["generated_tokens"] - before
    finally:
        engine.close()
    return {
        "backend": backend,
        "generated_tokens": generated,
        "seconds": round(seconds, 2),
        "tokens_per_second": generated / seconds,
    }


def scoring_throughput(teacher: Path, args, peak_tflops: float) -> dict:
    """Teacher-forced tokens/s of the teacher (exact full-vocabulary rows) and the fraction of the peak."""
    from gradalign_engine.backends.hf import HFBackend
    from gradalign_engine.config import ModelSpec

    backend = HFBackend(ModelSpec(model=str(teacher), dtype=args.dtype, device=args.device))
    params = sum(p.numel() for p in backend.model.parameters())
    contexts = [[3 + (i * 7 + k) % 1000 for k in range(64)] for i in range(args.score_rows)]
    completions = [[10 + (i * 13 + k) % 1000 for k in range(args.score_tokens)] for i in range(args.score_rows)]
    backend.score(contexts[:1], completions[:1])  # warm-up
    sync(args.device)
    t0 = time.perf_counter()
    backend.score(contexts, completions)
    sync(args.device)
    seconds = time.perf_counter() - t0
    tokens = sum(len(c) + len(y) for c, y in zip(contexts, completions))
    achieved = 2 * params * tokens / seconds / 1e12
    backend.close()
    return {
        "parameters": params,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_second": tokens / seconds,
        "tflops": achieved,
        "fraction_of_peak": achieved / peak_tflops if peak_tflops else None,
    }


def one_question(student: Path, teacher: Path, args) -> dict:
    """Wall time of one question's tree with 3 teachers, built and scored."""
    from gradalign_engine.pipeline import Engine

    engine = Engine(run_config(student, teacher, "hf", args, teachers=True))
    try:
        t0 = time.perf_counter()
        tree = engine.build_tree(question(), seed=7)
        built = time.perf_counter() - t0
        records = engine.score_tree(tree, list(engine.teachers), ["forward_kl", "jsd"])
        total = time.perf_counter() - t0
    finally:
        engine.close()
    s = tree.summary
    return {
        "build_seconds": round(built, 2),
        "total_seconds": round(total, 2),
        "rollouts": s.rollouts,
        "nodes": len(tree.nodes),
        "continuations": s.continuations,
        "tokens_generated": s.tokens_generated,
        "records": len(records),
    }


def step(name: str, budget: float, fn, results: dict) -> None:
    """Run one step, recording its result, its error, or that it ran past its budget."""
    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:  # noqa: BLE001 - recorded: the other steps still run
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    seconds = time.perf_counter() - t0
    results.setdefault("step_seconds", {})[name] = round(seconds, 1)
    if seconds > budget:
        results[name + "_over_budget"] = {"budget_s": budget, "seconds": round(seconds, 1)}
    print(f"[gpu_check] {name}: {seconds:.1f}s {json.dumps(results[name])[:300]}", file=sys.stderr, flush=True)


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU rehearsal: tiny shapes, float32, short rollouts")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.tiny:
        extra = dict(
            device="cpu",
            dtype="float32",
            vocab=2000,
            student=TINY,
            teacher=TINY_TEACHER,
            max_new_tokens=64,
            rollouts=4,
            nodes_per_path=3,
            continuations=2,
            trees=2,
            score_rows=8,
            score_tokens=64,
            matmul=512,
            kv_cache_bytes=256 * 1024**2,
        )
    else:
        extra = dict(
            device="cuda",
            dtype="bfloat16",
            vocab=QWEN3_VOCAB,
            student=QWEN3_1_7B,
            teacher=QWEN3_8B,
            max_new_tokens=2048,
            rollouts=8,
            nodes_per_path=4,
            continuations=4,
            trees=1,
            score_rows=32,
            score_tokens=1024,
            matmul=8192,
            kv_cache_bytes=40 * 1024**3,
        )
    for key, value in extra.items():
        setattr(args, key, value)
    return args


def main(argv=None) -> int:
    import torch

    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("[gpu_check] no CUDA device: run with --tiny for the CPU rehearsal", file=sys.stderr)
        return 2
    results: dict = {
        "benchmark": NAME,
        "tiny": args.tiny,
        "device": args.device,
        "dtype": args.dtype,
        "machine": platform.platform(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gradalign-gpu-check-") as tmp:
        student = model_dir(Path(tmp) / "student", args.student, args.vocab, args.dtype, 0, args.device)
        teacher = model_dir(Path(tmp) / "teacher", args.teacher, args.vocab, args.dtype, 1, args.device)
        results["models_seconds"] = round(time.perf_counter() - started, 1)
        step("matmul_peak", 30, lambda: matmul_peak(args.device, args.dtype, args.matmul), results)
        peak = results["matmul_peak"].get("tflops", 0.0)
        step("rollouts_hf", 120, lambda: rollout_throughput(student, "hf", args), results)
        step("rollouts_vllm", 150, lambda: _vllm_or_skip(student, args), results)
        if "tokens_per_second" in results["rollouts_vllm"] and "tokens_per_second" in results["rollouts_hf"]:
            results["vllm_over_hf"] = (
                results["rollouts_vllm"]["tokens_per_second"] / results["rollouts_hf"]["tokens_per_second"]
            )
        step("teacher_scoring", 60, lambda: scoring_throughput(teacher, args, peak), results)
        step("one_question_3_teachers", 180, lambda: one_question(student, teacher, args), results)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    write_result(NAME, results, args.tiny, args.out or (result_path(NAME, True) if args.tiny else None))
    return 0


def _vllm_or_skip(student: Path, args) -> dict:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return {"skipped": "vllm is not importable by this python"}
    return rollout_throughput(student, "vllm", args)


if __name__ == "__main__":
    sys.exit(main())
