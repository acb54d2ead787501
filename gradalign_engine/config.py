"""Typed configuration for every stage of a gradalign run.

Each dataclass documents every field once, in ``field(metadata={"help": ...})``; that text is the
single source for the TOML reference, the CLI help and error messages. ``__post_init__`` validates
ranges and raises :class:`ConfigError` naming the field and the bad value.

This module knows nothing of models, tensors, gRPC or storage: it is plain data.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

__all__ = [
    "ConfigError",
    "ModelSpec",
    "SamplingConfig",
    "PromptConfig",
    "RolloutConfig",
    "AnalysisConfig",
    "TeacherSpec",
    "RunConfig",
    "METHODS",
    "TEACHER_CONTEXTS",
    "load_run_config",
    "help_table",
]

#: Distillation methods whose update is compared with the ideal one.
METHODS = ("forward_kl", "reverse_kl", "jsd", "single_sample", "minillm")
#: Self-distillation context kinds (the student's weights with a context before the question).
TEACHER_CONTEXTS = ("correct_demo", "correct_and_wrong", "summary", "template")
_METHOD_ALIASES = {"fkl": "forward_kl", "rkl": "reverse_kl", "gkd": "jsd", "tinker": "single_sample"}



def _help(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


def _check(ok: bool, name: str, value: Any, reason: str) -> None:
    if not ok:
        raise ConfigError(name, value, reason)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how it is run."""

    model: str = field(
        default="smollm2-135m",
        metadata=_help(
            "Built-in short name (smollm2-135m), a Hugging Face model directory, or a .gguf file."
        ),
    )
    backend: str = field(default="hf", metadata=_help("Inference backend: 'hf' (transformers) or 'vllm'."))
    dtype: str = field(default="float32", metadata=_help("Weights and compute dtype: float32, bfloat16 or float16."))
    device: str = field(default="auto", metadata=_help("Device: 'auto' (cuda if present), 'cpu', 'cuda', 'cuda:N'."))
    max_batch_tokens: int = field(
        default=16384,
        metadata=_help("Memory budget of one forward batch, in tokens (rows x padded length)."),
    )
    prefix_cache_bytes: int = field(
        default=1024**3,
        metadata=_help("HF only: memory for sampled sequences kept for reuse (their KV cache and hidden states)."),
    )
    vllm_kv_cache_bytes: int = field(
        default=2 * 1024**3,
        metadata=_help("vLLM only: KV-cache size in bytes (kv_cache_memory_bytes)."),
    )

    def __post_init__(self) -> None:
        _check(isinstance(self.model, str) and self.model.strip() != "", "model", self.model, "must be a non-empty string")
        _check(self.backend in ("hf", "vllm"), "backend", self.backend, "must be 'hf' or 'vllm'")
        _check(self.dtype in ("float32", "bfloat16", "float16"), "dtype", self.dtype, "must be float32, bfloat16 or float16")
        _check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "device", self.device, "must be auto, cpu, cuda or cuda:N",
        )
        _check(isinstance(self.max_batch_tokens, int) and self.max_batch_tokens >= 64, "max_batch_tokens", self.max_batch_tokens, "must be an integer >= 64")
        _check(isinstance(self.prefix_cache_bytes, int) and self.prefix_cache_bytes >= 0, "prefix_cache_bytes", self.prefix_cache_bytes, "must be an integer >= 0")
        _check(isinstance(self.vllm_kv_cache_bytes, int) and self.vllm_kv_cache_bytes > 0, "vllm_kv_cache_bytes", self.vllm_kv_cache_bytes, "must be a positive integer")


@dataclass(frozen=True)
class SamplingConfig:
    """How the student samples rollouts and continuations (p is this sampling distribution)."""

    temperature: float = field(default=1.0, metadata=_help("Sampling temperature tau of the student (method.md default 1.0)."))
    top_p: float = field(default=1.0, metadata=_help("Nucleus sampling mass in (0, 1]; 1 disables."))
    top_k: int = field(default=0, metadata=_help("Keep only the k most likely tokens; 0 disables."))
    max_new_tokens: int = field(default=256, metadata=_help("Maximum completion length in tokens, for rollouts and continuations alike."))

    def __post_init__(self) -> None:
        _check(_is_number(self.temperature) and self.temperature > 0, "temperature", self.temperature, "must be a number > 0")
        _check(_is_number(self.top_p) and 0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1]")
        _check(isinstance(self.top_k, int) and self.top_k >= 0, "top_k", self.top_k, "must be an integer >= 0")
        _check(isinstance(self.max_new_tokens, int) and 1 <= self.max_new_tokens <= 32768, "max_new_tokens", self.max_new_tokens, "must be an integer in [1, 32768]")


@dataclass(frozen=True)
class PromptConfig:
    """How a question becomes the student's prompt."""

    mode: str = field(default="auto", metadata=_help("'chat' (tokenizer's chat template), 'raw' (plain text), or 'auto' (chat when the tokenizer has a template)."))
    system: str = field(default="", metadata=_help("Optional system message (chat mode only); empty keeps the template's default."))
    instruction: str = field(
        default="",
        metadata=_help("Text appended after the question; empty picks one per verifier (e.g. 'End with: The answer is N.')."),
    )

    def __post_init__(self) -> None:
        _check(self.mode in ("auto", "chat", "raw"), "mode", self.mode, "must be auto, chat or raw")
        _check(isinstance(self.system, str), "system", self.system, "must be a string")
        _check(isinstance(self.instruction, str), "instruction", self.instruction, "must be a string")


@dataclass(frozen=True)
class RolloutConfig:
    """The targeted-rollout algorithm (method.md, steps 1-6)."""

    num_rollouts: int = field(default=16, metadata=_help("G: base rollouts sampled per question (step 1)."))
    nodes_per_window: int = field(default=2, metadata=_help("Analysis nodes taken per exponential depth window [0,1), [1,3), [3,7), ... (step 3)."))
    nodes_per_path: int = field(default=20, metadata=_help("Maximum analysis nodes along one base rollout (step 3)."))
    priority: str = field(
        default="gkd_norm",
        metadata=_help("Node priority inside a window: 'gkd_norm' (norm of the teachers' JSD gradient), 'prob_diff' (total variation |p - q|), 'uniform' (seeded random)."),
    )
    candidate_top_k: int = field(default=3, metadata=_help("k: the student's and each teacher's top-k tokens join the sampled token as candidates (step 4)."))
    min_token_prob: float = field(default=1e-4, metadata=_help("Candidates with student probability p below this are dropped (step 4); the sampled token is always kept."))
    continuations: int = field(default=4, metadata=_help("M: student continuations sampled after each forced candidate (step 5)."))
    min_child_samples: int = field(default=2, metadata=_help("A child joins S(u) once at least this many rollouts or continuations pass through it."))
    max_continuations: int = field(default=4096, metadata=_help("Budget: forced continuations per question; nodes past it are recorded as skipped (budget_exhausted)."))
    adaptive_continuations: int = field(default=0, metadata=_help("Step 6: extra continuations per question spent where they most reduce the expected error of the target teachers' cosines; 0 disables."))
    adaptive_batch: int = field(default=8, metadata=_help("Step 6: continuations per child per adaptive round."))
    screen_rollouts: int = field(
        default=0,
        metadata=_help("Question screening: the first this many base rollouts are sampled and verified first; a question whose success rate among them lies outside [screen_min_success, screen_max_success] gets no nodes (screened out). 0 disables."),
    )
    screen_min_success: float = field(default=0.05, metadata=_help("Question screening: lowest success rate kept (inclusive)."))
    screen_max_success: float = field(default=0.95, metadata=_help("Question screening: highest success rate kept (inclusive)."))
    interval: str = field(default="wilson", metadata=_help("Interval on each success estimate: 'wilson' or 'beta' (Clopper-Pearson)."))
    confidence: float = field(default=0.95, metadata=_help("Confidence level of the intervals."))

    def __post_init__(self) -> None:
        _check(isinstance(self.num_rollouts, int) and 1 <= self.num_rollouts <= 4096, "num_rollouts", self.num_rollouts, "must be an integer in [1, 4096]")
        _check(isinstance(self.nodes_per_window, int) and self.nodes_per_window >= 0, "nodes_per_window", self.nodes_per_window, "must be an integer >= 0")
        _check(isinstance(self.nodes_per_path, int) and self.nodes_per_path >= 0, "nodes_per_path", self.nodes_per_path, "must be an integer >= 0")
        _check(self.priority in ("gkd_norm", "prob_diff", "uniform"), "priority", self.priority, "must be gkd_norm, prob_diff or uniform")
        _check(isinstance(self.candidate_top_k, int) and self.candidate_top_k >= 1, "candidate_top_k", self.candidate_top_k, "must be an integer >= 1")
        _check(_is_number(self.min_token_prob) and 0 <= self.min_token_prob < 1, "min_token_prob", self.min_token_prob, "must be in [0, 1)")
        _check(isinstance(self.continuations, int) and self.continuations >= 1, "continuations", self.continuations, "must be an integer >= 1")
        _check(isinstance(self.min_child_samples, int) and self.min_child_samples >= 1, "min_child_samples", self.min_child_samples, "must be an integer >= 1")
        _check(isinstance(self.max_continuations, int) and self.max_continuations >= 0, "max_continuations", self.max_continuations, "must be an integer >= 0")
        _check(isinstance(self.adaptive_continuations, int) and self.adaptive_continuations >= 0, "adaptive_continuations", self.adaptive_continuations, "must be an integer >= 0")
        _check(isinstance(self.adaptive_batch, int) and self.adaptive_batch >= 1, "adaptive_batch", self.adaptive_batch, "must be an integer >= 1")
        _check(isinstance(self.screen_rollouts, int) and 0 <= self.screen_rollouts <= self.num_rollouts, "screen_rollouts", self.screen_rollouts, f"must be an integer in [0, num_rollouts={self.num_rollouts}]")
        _check(_is_number(self.screen_min_success) and 0 <= self.screen_min_success <= 1, "screen_min_success", self.screen_min_success, "must be in [0, 1]")
        _check(_is_number(self.screen_max_success) and self.screen_min_success <= self.screen_max_success <= 1, "screen_max_success", self.screen_max_success, f"must be in [screen_min_success={self.screen_min_success}, 1]")
        _check(self.interval in ("wilson", "beta"), "interval", self.interval, "must be 'wilson' or 'beta'")
        _check(_is_number(self.confidence) and 0.5 <= self.confidence < 1, "confidence", self.confidence, "must be in [0.5, 1)")


@dataclass(frozen=True)
class AnalysisConfig:
    """How teacher updates are computed and compared with the ideal one."""

    methods: tuple[str, ...] = field(default=METHODS, metadata=_help(f"Distillation methods to score; any of {', '.join(METHODS)} (aliases fkl, rkl, gkd)."))
    jsd_beta: float = field(default=0.5, metadata=_help("beta of the generalized JSD (0 = forward KL, 1 = reverse KL, as TRL)."))
    minillm_gamma: float = field(default=1.0, metadata=_help("MiniLLM discount gamma of the return-to-go of log q - log p."))
    minillm_length_norm: bool = field(default=True, metadata=_help("MiniLLM: divide the return-to-go by the number of tokens it sums."))
    minillm_single_step: bool = field(default=True, metadata=_help("MiniLLM: replace the sampled step's term by its exact expectation (single-step decomposition)."))
    teacher_temperature: float = field(default=1.0, metadata=_help("Temperature applied to teacher logits to form q."))
    min_ideal_norm: float = field(default=0.01, metadata=_help("Skip a node (reason ideal_norm_below_threshold) when ||g*|| is below this."))
    bootstrap_samples: int = field(default=1000, metadata=_help("Bootstrap resamples for confidence intervals and p-values."))
    bootstrap_unit: str = field(default="rollout", metadata=_help("What the bootstrap resamples whole: 'rollout' or 'question'."))
    include_prefix_ids: bool = field(default=False, metadata=_help("Put each node's prefix token ids in its record."))

    def __post_init__(self) -> None:
        methods = self.methods
        _check(isinstance(methods, (list, tuple)) and len(methods) > 0, "methods", methods, "must be a non-empty list")
        canonical = tuple(dict.fromkeys(canonical_method(m) for m in methods))
        object.__setattr__(self, "methods", canonical)
        _check(_is_number(self.jsd_beta) and 0 <= self.jsd_beta <= 1, "jsd_beta", self.jsd_beta, "must be in [0, 1]")
        _check(_is_number(self.minillm_gamma) and 0 <= self.minillm_gamma <= 1, "minillm_gamma", self.minillm_gamma, "must be in [0, 1]")
        _check(isinstance(self.minillm_length_norm, bool), "minillm_length_norm", self.minillm_length_norm, "must be true or false")
        _check(isinstance(self.minillm_single_step, bool), "minillm_single_step", self.minillm_single_step, "must be true or false")
        _check(_is_number(self.teacher_temperature) and self.teacher_temperature > 0, "teacher_temperature", self.teacher_temperature, "must be a number > 0")
        _check(_is_number(self.min_ideal_norm) and self.min_ideal_norm >= 0, "min_ideal_norm", self.min_ideal_norm, "must be a number >= 0")
        _check(isinstance(self.bootstrap_samples, int) and 0 <= self.bootstrap_samples <= 100000, "bootstrap_samples", self.bootstrap_samples, "must be an integer in [0, 100000]")
        _check(self.bootstrap_unit in ("rollout", "question"), "bootstrap_unit", self.bootstrap_unit, "must be 'rollout' or 'question'")
        _check(isinstance(self.include_prefix_ids, bool), "include_prefix_ids", self.include_prefix_ids, "must be true or false")


def canonical_method(name: Any) -> str:
    """Map a method name or alias to its canonical name; raise ConfigError otherwise."""
    if not isinstance(name, str):
        raise ConfigError("methods", name, "each method must be a string")
    key = _METHOD_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in METHODS:
        raise ConfigError("methods", name, f"unknown method; choose from {', '.join(METHODS)}")
    return key


@dataclass(frozen=True)
class TeacherSpec:
    """One candidate teacher: an external model, or the student's weights with a context."""

    name: str = field(metadata=_help("Unique teacher name used in requests, records and reports."))
    kind: str = field(default="self", metadata=_help("'self' (student weights + context) or 'external' (another model sharing the tokenizer)."))
    context: str = field(default="correct_demo", metadata=_help(f"Self-distillation context: {', '.join(TEACHER_CONTEXTS)}."))
    model: ModelSpec | None = field(default=None, metadata=_help("External teachers: the model to load ([teachers.model] table)."))
    template: str = field(
        default="",
        metadata=_help("Context text placed before the question. For 'template': required; for the others: optional override of the built-in wording. Placeholders: {question} {solution} {answer} {wrong} {summary}."),
    )
    summary_field: str = field(default="summary", metadata=_help("'summary' context: dataset field holding a supplied summary."))
    summarizer: str = field(default="student", metadata=_help("'summary' context without a supplied summary: 'student' or the name of an external teacher that writes it."))
    prefer_dataset_solution: bool = field(default=True, metadata=_help("Demonstrations use the dataset's solution when present, else a verified-correct student rollout."))
    screen: bool = field(default=False, metadata=_help("Drop the context for a question when the teacher itself, answering greedily with it, fails the question."))

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and self.name.strip() != "" and len(self.name) <= 64, "teachers.name", self.name, "must be a non-empty string of at most 64 characters")
        _check(self.kind in ("self", "external"), f"teachers[{self.name}].kind", self.kind, "must be 'self' or 'external'")
        if self.kind == "external":
            _check(isinstance(self.model, ModelSpec), f"teachers[{self.name}].model", self.model, "an external teacher needs a [teachers.model] table with a model path")
        else:
            _check(self.context in TEACHER_CONTEXTS, f"teachers[{self.name}].context", self.context, f"must be one of {', '.join(TEACHER_CONTEXTS)}")
            if self.context == "template":
                _check(self.template.strip() != "", f"teachers[{self.name}].template", self.template, "a template context needs its text")
            if self.template:
                import string

                try:
                    names = {n for _, n, _, _ in string.Formatter().parse(self.template) if n}
                except ValueError as exc:
                    raise ConfigError(f"teachers[{self.name}].template", self.template, f"bad placeholder syntax: {exc}") from None
                bad = sorted(names - {"question", "solution", "answer", "wrong", "summary"})
                _check(not bad, f"teachers[{self.name}].template", self.template, f"unknown placeholders {bad}; use question, solution, answer, wrong, summary")


@dataclass(frozen=True)
class RunConfig:
    """Everything one analysis needs: student, teachers and every setting. Recorded in each receipt."""

    student: ModelSpec = field(default_factory=ModelSpec, metadata=_help("The student model ([student] table)."))
    teachers: tuple[TeacherSpec, ...] = field(default=(), metadata=_help("Candidate teachers ([[teachers]] tables)."))
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata=_help("Student sampling ([sampling] table)."))
    prompt: PromptConfig = field(default_factory=PromptConfig, metadata=_help("Prompt construction ([prompt] table)."))
    rollouts: RolloutConfig = field(default_factory=RolloutConfig, metadata=_help("Targeted rollouts ([rollouts] table)."))
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig, metadata=_help("Gradients and statistics ([analysis] table)."))
    seed: int = field(default=0, metadata=_help("Seed of every random choice; same config and seed give the same records."))

    def __post_init__(self) -> None:
        _check(isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**63, "seed", self.seed, "must be an integer in [0, 2^63)")
        names = [t.name for t in self.teachers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        _check(not dupes, "teachers.name", dupes, "teacher names must be unique")
        for t in self.teachers:
            if t.kind == "self" and t.context == "summary" and t.summarizer != "student":
                _check(t.summarizer in names, f"teachers[{t.name}].summarizer", t.summarizer, "must be 'student' or the name of another teacher")

    def teacher(self, name: str) -> TeacherSpec:
        for t in self.teachers:
            if t.name == name:
                return t
        raise KeyError(name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls: type, data: Mapping[str, Any] | None, where: str) -> Any:
    """Construct dataclass ``cls`` from a mapping, refusing unknown keys by name."""
    data = dict(data or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}" if where else unknown[0], data[unknown[0]], f"unknown setting; known: {', '.join(sorted(known))}")
    if "methods" in data and isinstance(data["methods"], list):
        data["methods"] = tuple(data["methods"])
    try:
        return cls(**data)
    except TypeError as exc:  # missing required field
        raise ConfigError(where or cls.__name__, data, str(exc)) from None


def run_config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Build a validated RunConfig from the parsed TOML mapping."""
    data = dict(data)
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(unknown[0], data[unknown[0]], f"unknown top-level setting; known: {', '.join(sorted(known))}")
    teachers = []
    for i, t in enumerate(data.get("teachers", []) or []):
        if not isinstance(t, Mapping):
            raise ConfigError(f"teachers[{i}]", t, "each teacher must be a table")
        t = dict(t)
        if "model" in t:
            t["model"] = _build(ModelSpec, t["model"] if isinstance(t["model"], Mapping) else {"model": t["model"]}, f"teachers[{i}].model")
        teachers.append(_build(TeacherSpec, t, f"teachers[{i}]"))
    return RunConfig(
        student=_build(ModelSpec, data.get("student"), "student"),
        teachers=tuple(teachers),
        sampling=_build(SamplingConfig, data.get("sampling"), "sampling"),
        prompt=_build(PromptConfig, data.get("prompt"), "prompt"),
        rollouts=_build(RolloutConfig, data.get("rollouts"), "rollouts"),
        analysis=_build(AnalysisConfig, data.get("analysis"), "analysis"),
        seed=data.get("seed", 0),
    )


def load_run_config(path: str | Path) -> RunConfig:
    """Read a TOML file into a validated RunConfig."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", str(path), "file not found")
    with path.open("rb") as fh:
        try:
            data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", str(path), f"invalid TOML: {exc}") from None
    return run_config_from_dict(data)


def help_table(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, help) for each field of a config dataclass: the one source of the docs."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = "(table)"
        else:
            default = "(required)"
        rows.append((f.name, default, f.metadata.get("help", "")))
    return rows
