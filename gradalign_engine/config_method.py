"""The method's settings: how the student samples, how prompts are built, the targeted-rollout
algorithm (method.md steps 1-6) and how teacher updates are compared with the ideal one.

Plain validated data; every field is declared with :func:`~.config_fields.setting`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gradalign_client.names import METHOD_ALIASES as _METHOD_ALIASES  # one list for the engine and the client
from gradalign_client.names import METHODS

from .config_fields import check, check_bool, check_choice, check_int, check_number, setting
from .errors import ConfigError

__all__ = ["METHODS", "SamplingConfig", "PromptConfig", "RolloutConfig", "AnalysisConfig", "canonical_method"]


def canonical_method(name: Any) -> str:
    """Map a method name or alias to its canonical name; raise ConfigError otherwise."""
    if not isinstance(name, str):
        raise ConfigError("methods", name, "each method must be a string")
    key = _METHOD_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in METHODS:
        raise ConfigError("methods", name, f"unknown method; choose from {', '.join(METHODS)}")
    return key


@dataclass(frozen=True)
class SamplingConfig:
    """How the student samples rollouts and continuations (p is this sampling distribution)."""

    temperature: float = setting(
        1.0, "Sampling temperature tau of the student (method.md default 1.0).", affects="tree"
    )
    top_p: float = setting(1.0, "Nucleus sampling mass in (0, 1]; 1 disables.", affects="tree")
    top_k: int = setting(0, "Keep only the k most likely tokens; 0 disables.", affects="tree")
    max_new_tokens: int = setting(
        256, "Maximum completion length in tokens, for rollouts and continuations alike.", affects="tree"
    )

    def __post_init__(self) -> None:
        check_number(self, "temperature", 0, open_lo=True)
        check_number(self, "top_p", 0, 1, open_lo=True)
        check_int(self, "top_k", 0, 1_000_000)
        check_int(self, "max_new_tokens", 1, 32768)


@dataclass(frozen=True)
class PromptConfig:
    """How a question becomes the student's prompt."""

    mode: str = setting(
        "auto",
        "'chat' (tokenizer's chat template), 'raw' (plain text), or 'auto' (chat when the tokenizer has a template).",
        affects="tree",
    )
    system: str = setting(
        "", "Optional system message (chat mode only); empty keeps the template's default.", affects="tree"
    )
    instruction: str = setting(
        "",
        "Text appended after the question; empty picks one per verifier (e.g. 'End with: The answer is N.').",
        affects="tree",
    )

    def __post_init__(self) -> None:
        check_choice(self, "mode", ("auto", "chat", "raw"), "must be auto, chat or raw")
        check(isinstance(self.system, str), "system", self.system, "must be a string")
        check(isinstance(self.instruction, str), "instruction", self.instruction, "must be a string")


@dataclass(frozen=True)
class RolloutConfig:
    """The targeted-rollout algorithm (method.md, steps 1-6)."""

    num_rollouts: int = setting(16, "G: base rollouts sampled per question (step 1).", affects="tree")
    nodes_per_window: int = setting(
        2, "Analysis nodes taken per exponential depth window [0,1), [1,3), [3,7), ... (step 3).", affects="tree"
    )
    nodes_per_path: int = setting(20, "Maximum analysis nodes along one base rollout (step 3).", affects="tree")
    priority: str = setting(
        "gkd_norm",
        "Node priority inside a window: 'gkd_norm' (norm of the teachers' JSD gradient), 'prob_diff' (total "
        "variation |p - q|), 'uniform' (seeded random).",
        affects="tree",
    )
    candidate_top_k: int = setting(
        3,
        "k: the student's and each teacher's top-k tokens join the sampled token as candidates (step 4).",
        affects="tree",
    )
    min_token_prob: float = setting(
        1e-4,
        "Candidates with student probability p below this are dropped (step 4); the sampled token is always kept.",
        affects="tree",
    )
    continuations: int = setting(
        4, "M: student continuations sampled after each forced candidate (step 5).", affects="tree"
    )
    min_child_samples: int = setting(
        2, "A child joins S(u) once at least this many rollouts or continuations pass through it.", affects="tree"
    )
    max_continuations: int = setting(
        4096,
        "Budget: forced continuations per question; nodes past it are recorded as skipped (budget_exhausted).",
        affects="tree",
    )
    adaptive_continuations: int = setting(
        0,
        "Step 6: extra continuations per question spent where they most reduce the expected error of the target "
        "teachers' cosines; 0 disables.",
        affects="tree",
    )
    adaptive_batch: int = setting(8, "Step 6: continuations per child per adaptive round.", affects="tree")
    screen_rollouts: int = setting(
        0,
        "Question screening: the first this many base rollouts are sampled and verified first; a question whose "
        "success rate among them lies outside [screen_min_success, screen_max_success] gets no nodes (screened out). "
        "0 disables.",
        affects="tree",
    )
    screen_min_success: float = setting(
        0.05, "Question screening: lowest success rate kept (inclusive).", affects="tree"
    )
    screen_max_success: float = setting(
        0.95, "Question screening: highest success rate kept (inclusive).", affects="tree"
    )
    interval: str = setting(
        "wilson", "Interval on each success estimate: 'wilson' or 'beta' (Clopper-Pearson).", affects="tree"
    )
    confidence: float = setting(0.95, "Confidence level of the intervals.", affects="tree")

    def __post_init__(self) -> None:
        check_int(self, "num_rollouts", 1, 4096)
        # Upper bounds keep absurd requests from overflowing anything; the token budget bounds the work.
        for name, hi in (("nodes_per_window", 4096), ("nodes_per_path", 4096)):
            check_int(self, name, 0, hi)
        for name in ("max_continuations", "adaptive_continuations"):
            check_int(self, name, 0, 10_000_000)
        for name, hi in (("candidate_top_k", 1024), ("continuations", 4096), ("adaptive_batch", 4096)):
            check_int(self, name, 1, hi)
        check_int(self, "min_child_samples", 1, 1_000_000)
        check_choice(self, "priority", ("gkd_norm", "prob_diff", "uniform"), "must be gkd_norm, prob_diff or uniform")
        check_number(self, "min_token_prob", 0, 1, open_hi=True)
        check_int(
            self,
            "screen_rollouts",
            0,
            self.num_rollouts,
            f"must be an integer in [0, num_rollouts={self.num_rollouts}]",
        )
        check_number(self, "screen_min_success", 0, 1)
        check_number(
            self,
            "screen_max_success",
            self.screen_min_success,
            1,
            reason=f"must be in [screen_min_success={self.screen_min_success}, 1]",
        )
        check_choice(self, "interval", ("wilson", "beta"), "must be 'wilson' or 'beta'")
        check_number(self, "confidence", 0.5, 1, open_hi=True)


@dataclass(frozen=True)
class AnalysisConfig:
    """How teacher updates are computed and compared with the ideal one."""

    methods: tuple[str, ...] = setting(
        METHODS,
        f"Distillation methods to score; any of {', '.join(METHODS)} (aliases fkl, rkl, gkd).",
        affects="selection",
    )
    jsd_beta: float = setting(
        0.5, "beta of the generalized JSD (0 = forward KL, 1 = reverse KL, as TRL).", affects="records"
    )
    minillm_gamma: float = setting(
        1.0, "MiniLLM discount gamma of the return-to-go of log q - log p.", affects="records"
    )
    minillm_length_norm: bool = setting(
        True, "MiniLLM: divide the return-to-go by the number of tokens it sums.", affects="records"
    )
    minillm_single_step: bool = setting(
        True,
        "MiniLLM: replace the sampled step's term by its exact expectation (single-step decomposition).",
        affects="records",
    )
    teacher_temperature: float = setting(1.0, "Temperature applied to teacher logits to form q.", affects="records")
    min_ideal_norm: float = setting(
        0.01, "Skip a node (reason ideal_norm_below_threshold) when ||g*|| is below this.", affects="records"
    )
    bootstrap_samples: int = setting(
        1000, "Bootstrap resamples for confidence intervals and p-values.", affects="report"
    )
    bootstrap_unit: str = setting(
        "rollout", "What the bootstrap resamples whole: 'rollout' or 'question'.", affects="report"
    )
    include_prefix_ids: bool = setting(False, "Put each node's prefix token ids in its record.", affects="presentation")

    def __post_init__(self) -> None:
        methods = self.methods
        check(isinstance(methods, (list, tuple)) and len(methods) > 0, "methods", methods, "must be a non-empty list")
        object.__setattr__(self, "methods", tuple(dict.fromkeys(canonical_method(m) for m in methods)))
        check_number(self, "jsd_beta", 0, 1)
        check_number(self, "minillm_gamma", 0, 1)
        check_number(self, "teacher_temperature", 0, open_lo=True)
        check_number(self, "min_ideal_norm", 0)
        check_int(self, "bootstrap_samples", 0, 100000)
        check_choice(self, "bootstrap_unit", ("rollout", "question"), "must be 'rollout' or 'question'")
        for name in ("minillm_length_norm", "minillm_single_step", "include_prefix_ids"):
            check_bool(self, name)
