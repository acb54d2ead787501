"""Shared helpers of the verifier tests: a one-line question builder, a check shortcut, and a
four-way choice list (imported by test_verifiers.py and test_verifier_registry.py)."""

from __future__ import annotations

from gradalign_engine.data import Question
from gradalign_engine.verifiers import VerifyResult, get_verifier


def q(answer: str, verifier: str = "numeric", choices: tuple[str, ...] = (), qid: str = "q1") -> Question:
    return Question(id=qid, question="?", answer=answer, verifier=verifier, choices=choices)


def check(name: str, completion: str, question: Question, **options) -> VerifyResult:
    return get_verifier(name, **options).check(completion, question)


CHOICES = ("red giant", "white dwarf", "neutron star", "black hole")
