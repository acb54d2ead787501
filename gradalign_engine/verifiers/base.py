"""What every verifier shares: the verdict type, the plug-in protocol and option errors.

Knows nothing of models, tokens or prompts: a verifier sees the completion text and the Question.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..data import Question
from ..errors import GradalignError, short_repr

__all__ = [
    "VerifierError",
    "UnknownVerifierError",
    "VerifyResult",
    "Verifier",
    "VerifierFactory",
    "require_str",
    "reject_unknown_options",
    "judge",
]


class VerifierError(GradalignError, ValueError):
    """A bad verifier name, option or reference answer; the message names the field and the value."""

    code = "INVALID_ARGUMENT"

    def __init__(self, field_name: str, value: Any, reason: str):
        self.field_name = field_name
        self.value = value
        self.reason = reason
        super().__init__(f"{field_name}={short_repr(value)}: {reason}")


class UnknownVerifierError(VerifierError):
    """No verifier is registered under the requested name; the message lists the known ones."""

    def __init__(self, name: Any, known: list[str]):
        self.name = name
        self.known = known
        super().__init__("verifier", name, f"unknown verifier; known: {', '.join(known) or '(none)'}")


@dataclass(frozen=True)
class VerifyResult:
    """The verdict on one completion.

    ``extracted`` is the answer read from it (None if none); ``reason`` says why there is none, or
    why a verdict is doubtful ("no answer", "several answers: B, C", "letter and text disagree: ...").
    """

    correct: bool
    extracted: str | None
    reason: str | None = field(default=None, compare=False)  # an explanation, not part of the verdict


@runtime_checkable
class Verifier(Protocol):
    """What the engine needs of a verifier. Plug-ins need not inherit from anything.

    A verifier may also define ``validate(question)``, which raises VerifierError for a question
    whose reference answer it cannot read; the engine calls it before any sampling. Its ``check`` may
    take a keyword ``truncated`` (the completion was cut at the length limit); the engine passes it
    to verifiers that accept it (:func:`judge`).
    """

    name: str

    def check(self, completion_text: str, question: Question) -> VerifyResult:
        """Judge ``completion_text`` against ``question.answer``."""
        ...


VerifierFactory = Callable[..., Verifier]


def require_str(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise VerifierError(name, value, "must be a string")


def reject_unknown_options(verifier_name: str, unknown: dict[str, Any], known: tuple[str, ...] = ()) -> None:
    """Refuse options a verifier does not take, by name (a typo must not be silently ignored)."""
    if unknown:
        key = sorted(unknown)[0]
        takes = f"known: {', '.join(known)}" if known else f"the {verifier_name} verifier takes none"
        raise VerifierError(f"{verifier_name}.{key}", unknown[key], f"unknown option; {takes}")


def judge(verifier: Verifier, completion_text: str, question: Question, *, truncated: bool = False) -> VerifyResult:
    """``verifier.check``, passing ``truncated`` when the verifier's check takes it."""
    import inspect

    try:
        takes = "truncated" in inspect.signature(verifier.check).parameters
    except (TypeError, ValueError):
        takes = False
    if takes:
        return verifier.check(completion_text, question, truncated=truncated)
    return verifier.check(completion_text, question)
