"""Shared pieces of the service tests: tiny settings, questions, and a server over one session engine.

One engine is loaded per session and shared by the servers the tests start (sequentially: a shared
engine must not serve two workers at once). Settings are tiny: 3 rollouts of 8 tokens.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from gradalign_engine.config import AnalysisConfig, ModelSpec, RolloutConfig, RunConfig, SamplingConfig, TeacherSpec

ROOT = Path(__file__).resolve().parent.parent
# The tiny model writes random words; a completion succeeds when it holds the answer's token anywhere, so
# trees get mixed outcomes (a numeric verifier reads random words as no answer at all).
QUESTION = {
    "id": "q1",
    "question": "what is 1 + 2 ?",
    "answer": "3",
    "solution": "1 + 2 = 3 . the answer is 3",
    "verifier": "regex",
    "verifier_options": {"pattern": r"\b3\b"},
}
QUESTION_2 = {
    "id": "q2",
    "question": "how many is 2 + 2 ?",
    "answer": "4",
    "solution": "2 + 2 = 4 . the answer is 4",
    "verifier": "regex",
    "verifier_options": {"pattern": r"\b4\b"},
}
TEACHERS = ("demo", "cw")
# Large enough to run for many seconds on the tiny model, for the cancellation tests.
BIG = {"num_rollouts": 16, "max_new_tokens": 200, "nodes_per_path": 8, "continuations": 8}


def tiny_config(model_dir: Path, **teacher_extra) -> RunConfig:
    teachers = [TeacherSpec(name="demo", context="correct_demo"), TeacherSpec(name="cw", context="correct_and_wrong")]
    if teacher_extra:
        teachers.append(TeacherSpec(**teacher_extra))
    return RunConfig(
        student=ModelSpec(model=str(model_dir), device="cpu"),
        teachers=tuple(teachers),
        sampling=SamplingConfig(max_new_tokens=8),
        rollouts=RolloutConfig(
            num_rollouts=3, nodes_per_window=1, nodes_per_path=2, candidate_top_k=1, continuations=2
        ),
        analysis=AnalysisConfig(methods=("forward_kl", "reverse_kl"), bootstrap_samples=50),
    )


def _idle(server, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while server.jobs.running or server.jobs.queued:
        assert time.monotonic() < deadline, "the engine worker did not go idle"
        time.sleep(0.02)


def _metric(server, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
