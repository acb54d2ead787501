"""The models a run loads: the student's and an external teacher's :class:`ModelSpec`, and the
:class:`TeacherSpec` of each candidate teacher (an external model, or the student with a context).

Plain validated data; every field is declared with :func:`~.config_fields.setting`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from .config_fields import check, check_choice, check_int, setting
from .errors import ConfigError

__all__ = ["ModelSpec", "TeacherSpec", "TEACHER_CONTEXTS"]

#: Self-distillation context kinds (the student's weights with a context before the question).
TEACHER_CONTEXTS = ("correct_demo", "correct_and_wrong", "summary", "template")
_PLACEHOLDERS = {"question", "solution", "answer", "wrong", "summary"}


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how it is run."""

    model: str = setting(
        "smollm2-135m",
        "Built-in short name (smollm2-135m), a Hugging Face model directory, or a .gguf file.",
        affects="model",
    )
    backend: str = setting("hf", "Inference backend: 'hf' (transformers) or 'vllm'.", affects="model")
    dtype: str = setting("float32", "Weights and compute dtype: float32, bfloat16 or float16.", affects="model")
    device: str = setting("auto", "Device: 'auto' (cuda if present), 'cpu', 'cuda', 'cuda:N'.", affects="model")
    max_batch_tokens: int = setting(
        16384, "Memory budget of one forward batch, in tokens (rows x padded length).", affects="resources"
    )
    prefix_cache_bytes: int = setting(
        1024**3,
        "HF only: memory for sampled sequences kept for reuse (their KV cache and hidden states).",
        affects="resources",
    )
    forward_slice_tokens: int = setting(
        0,
        "HF only: longest forward (rows x positions) between cancel checks; 0 sizes slices to about a quarter "
        "second of measured work, so a cancel or deadline stops a long prefill within about a second.",
        affects="resources",
    )
    vllm_kv_cache_bytes: int = setting(
        2 * 1024**3, "vLLM only: KV-cache size in bytes per GPU (kv_cache_memory_bytes).", affects="resources"
    )
    vllm_scoring: str = setting(
        "vllm",
        "vLLM only: where exact full-vocabulary scoring runs: 'vllm' (the vLLM engine itself, one copy of the "
        "weights) or 'twin' (a transformers copy of the weights on the same device; a warning says when it loads). "
        "Both agree with the HF backend to ~1e-5 in float32.",
        affects="resources",
    )
    vllm_tensor_parallel_size: int = setting(
        1,
        "vLLM only: GPUs one model is split over (tensor parallelism), for models too large for one GPU.",
        affects="resources",
    )

    def __post_init__(self) -> None:
        check(
            isinstance(self.model, str) and self.model.strip() != "", "model", self.model, "must be a non-empty string"
        )
        check_choice(self, "backend", ("hf", "vllm"), "must be 'hf' or 'vllm'")
        check_choice(self, "dtype", ("float32", "bfloat16", "float16"), "must be float32, bfloat16 or float16")
        device_ok = isinstance(self.device, str) and (
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        )
        check(device_ok, "device", self.device, "must be auto, cpu, cuda or cuda:N")
        check_int(self, "max_batch_tokens", 64)
        check_int(self, "prefix_cache_bytes", 0)
        check_int(self, "forward_slice_tokens", 0)
        check_int(self, "vllm_kv_cache_bytes", 1, reason="must be a positive integer")
        check_choice(self, "vllm_scoring", ("vllm", "twin"), "must be 'vllm' or 'twin'")
        check_int(self, "vllm_tensor_parallel_size", 1, 1024)
        if self.vllm_scoring == "twin" and self.vllm_tensor_parallel_size > 1:
            check(
                False,
                "vllm_scoring",
                self.vllm_scoring,
                "the twin holds the whole model on one device: with vllm_tensor_parallel_size > 1 use 'vllm'",
            )


@dataclass(frozen=True)
class TeacherSpec:
    """One candidate teacher: an external model, or the student's weights with a context."""

    name: str = setting(help="Unique teacher name used in requests, records and reports.", affects="teacher")
    kind: str = setting(
        "self",
        "'self' (student weights + context) or 'external' (another model sharing the tokenizer).",
        affects="teacher",
    )
    context: str = setting(
        "correct_demo", f"Self-distillation context: {', '.join(TEACHER_CONTEXTS)}.", affects="teacher"
    )
    model: ModelSpec | None = setting(
        None, "External teachers: the model to load ([teachers.model] table).", affects="teacher"
    )
    template: str = setting(
        "",
        "Context text placed before the question. For 'template': required; for the others: optional override of the "
        "built-in wording. Placeholders: {question} {solution} {answer} {wrong} {summary}.",
        affects="teacher",
    )
    summary_field: str = setting(
        "summary", "'summary' context: dataset field holding a supplied summary.", affects="teacher"
    )
    summarizer: str = setting(
        "student",
        "'summary' context without a supplied summary: 'student' or the name of an external teacher that writes it.",
        affects="teacher",
    )
    prefer_dataset_solution: bool = setting(
        True,
        "Demonstrations use the dataset's solution when present, else a verified-correct student rollout.",
        affects="teacher",
    )
    screen: bool = setting(
        False,
        "Drop the context for a question when the teacher itself, answering greedily with it, fails the question.",
        affects="teacher",
    )

    def __post_init__(self) -> None:
        name_ok = isinstance(self.name, str) and self.name.strip() != "" and len(self.name) <= 64
        check(name_ok, "teachers.name", self.name, "must be a non-empty string of at most 64 characters")
        where = f"teachers[{self.name}]"
        check(self.kind in ("self", "external"), f"{where}.kind", self.kind, "must be 'self' or 'external'")
        if self.kind == "external":
            reason = "an external teacher needs a [teachers.model] table with a model path"
            check(isinstance(self.model, ModelSpec), f"{where}.model", self.model, reason)
            return
        reason = f"must be one of {', '.join(TEACHER_CONTEXTS)}"
        check(self.context in TEACHER_CONTEXTS, f"{where}.context", self.context, reason)
        if self.context == "template":
            check(self.template.strip() != "", f"{where}.template", self.template, "a template context needs its text")
        if self.template:
            try:
                names = {n for _, n, _, _ in string.Formatter().parse(self.template) if n}
            except ValueError as exc:
                raise ConfigError(f"{where}.template", self.template, f"bad placeholder syntax: {exc}") from None
            bad = sorted(names - _PLACEHOLDERS)
            reason = f"unknown placeholders {bad}; use question, solution, answer, wrong, summary"
            check(not bad, f"{where}.template", self.template, reason)
