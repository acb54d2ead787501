"""Verifiers: judge whether a completion answers a question correctly.

A verifier reads a completion, finds the final answer it commits to and compares it with the
question's reference ``answer``. Verifiers are looked up by name in a registry (``Question.verifier``
names one); :func:`register_verifier` adds new kinds, :func:`get_verifier` builds one with options.

Built-ins: ``numeric`` (final number, compared with a tolerance), ``choice`` (multiple-choice
option, by letter or text), ``yesno``, ``exact`` (normalised string match) and ``regex`` (a user
pattern). ``numeric``, ``choice`` and ``yesno`` read completions as a careful grader does, by the
rules of tests/verifier_labels/CONVENTION.md; a verdict without an answer carries its reason.

This package knows nothing of models, tokens, prompts or how datasets are stored: it sees only the
completion text and the :class:`~gradalign_engine.data.Question`. Verifiers are pure functions of
those two, so they are safe to call from any thread.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..data import Question
from .base import UnknownVerifierError, Verifier, VerifierError, VerifierFactory, VerifyResult, judge
from .choice import ChoiceVerifier
from .numeric import NumericVerifier, extract_number
from .reading import normalize_text
from .simple import ExactVerifier, RegexVerifier
from .yesno import YesNoVerifier

__all__ = [
    "VerifierError",
    "UnknownVerifierError",
    "VerifyResult",
    "Verifier",
    "VerifierFactory",
    "NumericVerifier",
    "ChoiceVerifier",
    "YesNoVerifier",
    "ExactVerifier",
    "RegexVerifier",
    "register_verifier",
    "get_verifier",
    "verifier_names",
    "unregister_verifier",
    "scoped_registry",
    "verify",
    "judge",
    "normalize_text",
    "extract_number",
]

_VERIFIER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_REGISTRY: dict[str, VerifierFactory] = {}
_REGISTRY_LOCK = threading.Lock()  # the server may register plug-ins while jobs look names up


def register_verifier(name: str, factory: VerifierFactory, *, replace: bool = False) -> None:
    """Register ``factory(**options) -> Verifier`` under ``name``.

    Raises VerifierError for a malformed name, a non-callable factory, or a name already taken
    (unless ``replace``), so that two plug-ins never silently shadow each other.
    """
    if not isinstance(name, str) or not _VERIFIER_NAME.fullmatch(name):
        raise VerifierError(
            "name", name, "must start with a letter and hold only letters, digits, '_', '.', '-' (at most 64)"
        )
    if not callable(factory):
        raise VerifierError("factory", factory, f"the factory of verifier {name!r} must be callable")
    with _REGISTRY_LOCK:
        if name in _REGISTRY and not replace:
            raise VerifierError(
                "name", name, "a verifier of that name is already registered; pass replace=True to override"
            )
        _REGISTRY[name] = factory


def unregister_verifier(name: str) -> None:
    """Remove ``name`` from the registry; UnknownVerifierError when it is not registered."""
    with _REGISTRY_LOCK:
        if name not in _REGISTRY:
            raise UnknownVerifierError(name, sorted(_REGISTRY))
        del _REGISTRY[name]


@contextmanager
def scoped_registry() -> Iterator[None]:
    """Within the block, registrations and removals are local: the registry is restored on exit.

    For tests and for tools that try a plug-in without leaving it behind.
    """
    with _REGISTRY_LOCK:
        saved = dict(_REGISTRY)
    try:
        yield
    finally:
        with _REGISTRY_LOCK:
            _REGISTRY.clear()
            _REGISTRY.update(saved)


def verifier_names() -> list[str]:
    """The registered verifier names, sorted."""
    with _REGISTRY_LOCK:
        return sorted(_REGISTRY)


def get_verifier(name: str, **options: Any) -> Verifier:
    """Build the verifier registered as ``name`` with ``options``.

    Raises UnknownVerifierError (listing the known names) or VerifierError for bad options.
    """
    with _REGISTRY_LOCK:
        factory = _REGISTRY.get(name) if isinstance(name, str) else None
        known = sorted(_REGISTRY)
    if factory is None:
        raise UnknownVerifierError(name, known)
    try:
        verifier = factory(**options)
    except TypeError as exc:  # a missing or unexpected keyword: the caller's options are wrong
        raise VerifierError(f"{name} options", options, f"rejected by the {name} verifier: {exc}") from exc
    if not isinstance(verifier, Verifier):
        raise VerifierError(
            "factory", factory, f"the factory of verifier {name!r} returned {verifier!r}, which has no name and check()"
        )
    return verifier


def verify(completion_text: str, question: Question, **options: Any) -> VerifyResult:
    """Judge a completion with the verifier the question names (``question.verifier``)."""
    return get_verifier(question.verifier, **options).check(completion_text, question)


register_verifier("numeric", NumericVerifier)
register_verifier("choice", ChoiceVerifier)
register_verifier("yesno", YesNoVerifier)
register_verifier("exact", ExactVerifier)
register_verifier("regex", RegexVerifier)
