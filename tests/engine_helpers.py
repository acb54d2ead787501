"""Shared pieces of the engine tests: the repository root, the tiny-model question and a small run
config (imported by test_engine.py, test_adaptive.py and test_config.py)."""

from __future__ import annotations

from pathlib import Path

from gradalign_engine.config import AnalysisConfig, ModelSpec, RolloutConfig, RunConfig, SamplingConfig, TeacherSpec
from gradalign_engine.data import Question

REPO = Path(__file__).resolve().parents[1]
# The tiny model writes random words: a completion succeeds when it holds the token "3" anywhere (about half
# do), which gives every tree mixed outcomes. A numeric verifier reads random words as no answer at all.
Q = Question(
    id="q1",
    question="what is 1 + 2 ?",
    answer="3",
    solution="1 + 2 = 3 . the answer is 3",
    verifier="regex",
    extra={"verifier_options": {"pattern": r"\b3\b"}},
)


def tiny_config(model_dir, **over) -> RunConfig:
    base = dict(
        student=ModelSpec(model=str(model_dir), device="cpu"),
        teachers=(
            TeacherSpec(name="demo", context="correct_demo"),
            TeacherSpec(name="cw", context="correct_and_wrong"),
        ),
        sampling=SamplingConfig(max_new_tokens=8),
        rollouts=RolloutConfig(num_rollouts=6, continuations=3),
        analysis=AnalysisConfig(bootstrap_samples=50),
    )
    base.update(over)
    return RunConfig(**base)
