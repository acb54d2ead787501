"""What a run will cost before it starts: generated tokens, teacher-scored tokens and time.

The time comes from a short calibration measured on the loaded backend (the student samples a batch
of rows as long as the run's, and scores a few teacher-forced sequences), never from a constant.
The token counts come from the settings: base rollouts of the measured mean length, the analysis
nodes the depth windows allow (an upper bound: nodes that rollouts share are merged in the real run),
their candidates and continuations, capped by the continuation budget, and the teacher passes.
After a run, :func:`compare` says how far the estimate was from what was spent.

Knows the engine's settings and a backend's generate/score calls; knows nothing of servers or files.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .backends import BranchRequest
from .build import depth_windows
from .config import RolloutConfig, SamplingConfig
from .data import Question
from .prompts import render_prompt

__all__ = ["Calibration", "CostEstimate", "calibrate", "estimate", "compare"]

_CALIBRATION_ROWS = 16


@dataclass(frozen=True)
class Calibration:
    """Rates measured on the loaded student (tokens per second) and the completions' mean length."""

    generate_tokens_per_s: float
    score_tokens_per_s: float
    mean_completion_fraction: float  # mean completion length / max_new_tokens in the calibration sample
    seconds: float  # what the calibration itself took


@dataclass(frozen=True)
class CostEstimate:
    """Expected cost of building and scoring ``questions`` trees."""

    questions: int
    generated_tokens: int  # student tokens sampled: base rollouts and continuations
    teacher_scored_tokens: int  # completion tokens teacher-forced (node choice and records)
    nodes: int  # analysis nodes, upper bound (the run merges nodes that rollouts share)
    seconds: float
    calibration: Calibration

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CostEstimate:
        return cls(**{**data, "calibration": Calibration(**data["calibration"])})

    def lines(self) -> list[str]:
        c = self.calibration
        return [
            f"estimate for {self.questions} question(s): {self.generated_tokens:,} generated tokens, "
            f"{self.teacher_scored_tokens:,} teacher-scored tokens, {self.nodes:,} nodes, {_duration(self.seconds)}",
            f"  {PESSIMISM_NOTE}",
            f"  calibration ({c.seconds:.1f} s on the loaded student): sampling {c.generate_tokens_per_s:,.0f} tok/s, "
            f"scoring {c.score_tokens_per_s:,.0f} tok/s, completions {c.mean_completion_fraction:.0%} of the maximum",
        ]


# Why the estimate overshoots, said beside it (the client CLI has the same sentence).
PESSIMISM_NOTE = (
    "pessimistic: it counts every rollout's nodes as distinct and every teacher's top-k as new candidates; "
    "runs spend less (README, Speed)"
)


def calibrate(student, question: Question, prompt_config, sampling: SamplingConfig, seed: int = 0) -> Calibration:
    """Sample a batch of rows like the run's and score a few of them, timing both."""
    started = time.perf_counter()
    prompt = tuple(render_prompt(student.tokenizer, question, prompt_config))
    before = student.counters.snapshot()["generated_tokens"]
    began = time.perf_counter()
    request = BranchRequest(prefix=prompt, n=_CALIBRATION_ROWS, max_new_tokens=sampling.max_new_tokens, seed=seed)
    samples = student.generate([request], temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)[
        0
    ]
    gen_seconds = time.perf_counter() - began
    generated = student.counters.snapshot()["generated_tokens"] - before
    completions = [s for s in samples if s][:4] or [[prompt[-1]]]
    began = time.perf_counter()
    student.score([list(prompt)] * len(completions), completions, temperature=sampling.temperature)
    score_seconds = time.perf_counter() - began
    scored = sum(len(prompt) + len(c) for c in completions)
    mean_len = sum(len(s) for s in samples) / max(len(samples), 1)
    return Calibration(
        generate_tokens_per_s=max(generated, 1) / max(gen_seconds, 1e-6),
        score_tokens_per_s=scored / max(score_seconds, 1e-6),
        mean_completion_fraction=min(max(mean_len / sampling.max_new_tokens, 1e-3), 1.0),
        seconds=time.perf_counter() - started,
    )


def estimate(
    questions: Sequence[Question],
    rollouts: RolloutConfig,
    sampling: SamplingConfig,
    calibration: Calibration,
    *,
    target_teachers: int,
    scored_teachers: int,
    prompt_tokens: Sequence[int],
) -> CostEstimate:
    """A pessimistic estimate of tokens and time for one tree per question with ``scored_teachers`` scored on each.

    Every rollout's nodes count as distinct and every teacher's top-k as new candidates, so real runs
    spend less: 1/6.3 of the generated tokens in the bundled study, 1/2.5 in the tiny test run.
    """
    length = max(1.0, sampling.max_new_tokens * calibration.mean_completion_fraction)
    generated = scored = nodes_total = 0.0
    for prompt in prompt_tokens:
        nodes, continued = _continuations(rollouts, length, target_teachers)
        base = rollouts.num_rollouts * length
        generated += base + continued + rollouts.adaptive_continuations * length / 2
        # Node choice teacher-forces every rollout through each target teacher; records re-score the
        # rollouts through nodes with each scored teacher (the prompt counts: it is forwarded too).
        scored += (target_teachers + scored_teachers) * rollouts.num_rollouts * (length + prompt)
        nodes_total += nodes
    seconds = generated / calibration.generate_tokens_per_s + scored / calibration.score_tokens_per_s
    return CostEstimate(
        questions=len(questions),
        generated_tokens=int(round(generated)),
        teacher_scored_tokens=int(round(scored)),
        nodes=int(round(nodes_total)),
        seconds=seconds,
        calibration=calibration,
    )


def _continuations(rollouts: RolloutConfig, length: float, target_teachers: int) -> tuple[float, float]:
    """(nodes, generated continuation tokens) of one tree, from the depth windows and the budget."""
    windows = depth_windows(int(round(length)))
    per_path = min(rollouts.nodes_per_path, len(windows) * rollouts.nodes_per_window)
    candidates = 1 + rollouts.candidate_top_k * (
        1 + target_teachers
    )  # the sampled token, student's and teachers' top-k
    per_node = candidates * rollouts.continuations
    nodes = rollouts.num_rollouts * per_path
    if per_node:
        nodes = min(nodes, rollouts.max_continuations / per_node)
    starts = [lo for lo, _ in windows[:per_path]] or [0]
    remaining = max(length - sum(starts) / len(starts) - 1, 0.0)
    return nodes, nodes * per_node * remaining


def compare(estimate_: CostEstimate, generated_tokens: int, seconds: float) -> str:
    """One line: the estimate against what the run spent."""
    gen = estimate_.generated_tokens / generated_tokens if generated_tokens else float("nan")
    time_ratio = estimate_.seconds / seconds if seconds else float("nan")
    return (
        f"estimate vs actual: generated tokens {estimate_.generated_tokens:,} vs {generated_tokens:,} "
        f"(x{gen:.2f}), time {_duration(estimate_.seconds)} vs {_duration(seconds)} (x{time_ratio:.2f})"
    )


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
