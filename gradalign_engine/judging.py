"""Verdicts on token completions: decode, build the question's verifier, judge.

A completion that reached its length limit without an end-of-sequence token is *truncated*: its last
sentence concludes nothing, and verifiers that take the ``truncated`` keyword are told so.
Knows verifiers and a tokenizer; knows nothing of trees or teachers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .data import Question
from .errors import ConfigError
from .verifiers import Verifier, VerifyResult, get_verifier, judge

__all__ = ["Judge", "verifier_for"]


def verifier_for(question: Question) -> Verifier:
    """The verifier the question names, built with its ``extra.verifier_options``."""
    options = question.extra.get("verifier_options", {}) if question.extra else {}
    if not isinstance(options, Mapping):
        raise ConfigError("question.extra.verifier_options", options, "must be an object of verifier options")
    return get_verifier(question.verifier, **dict(options))


class Judge:
    """Judges completions written with one tokenizer and set of end-of-sequence tokens."""

    def __init__(self, tokenizer, eos_token_ids: frozenset[int]):
        self.tokenizer = tokenizer
        self.eos = eos_token_ids

    def validate(self, question: Question) -> None:
        """Refuse, before any sampling, a question whose verifier or reference answer is unusable."""
        verifier = verifier_for(question)
        if hasattr(verifier, "validate"):
            verifier.validate(question)

    def __call__(self, question: Question, tokens: Sequence[int], max_new_tokens: int) -> tuple[VerifyResult, str]:
        """(verdict, decoded text) of a completion sampled with at most ``max_new_tokens`` tokens."""
        text = self.tokenizer.decode(list(tokens), skip_special_tokens=True)
        truncated = len(tokens) >= max_new_tokens and (not tokens or tokens[-1] not in self.eos)
        return judge(verifier_for(question), text, question, truncated=truncated), text
