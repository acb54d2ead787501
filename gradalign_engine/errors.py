"""Engine exceptions, one class per way a request can fail.

Each class carries a ``code`` naming the gRPC status the service maps it to, so the servicer needs no
table of its own; the engine itself never imports grpc. Messages name the bad field and value.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "GradalignError",
    "ConfigError",
    "NotFoundError",
    "PreconditionError",
    "TokenizerMismatchError",
    "BudgetError",
    "Cancelled",
]


class GradalignError(Exception):
    """Base class. ``code`` is the gRPC status name the service answers with."""

    code = "INTERNAL"


class ConfigError(GradalignError, ValueError):
    """An invalid setting or argument (INVALID_ARGUMENT); the message names the field and value."""

    code = "INVALID_ARGUMENT"

    def __init__(self, field_name: str, value: Any, reason: str):
        self.field_name = field_name
        self.value = value
        self.reason = reason
        super().__init__(f"{field_name}={short_repr(value)}: {reason}")


def short_repr(value: Any, limit: int = 160) -> str:
    """repr() of a value, cut to ``limit`` characters: a hostile megabyte never lands in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class NotFoundError(GradalignError, KeyError):
    """An unknown teacher, tree or model (NOT_FOUND)."""

    code = "NOT_FOUND"

    def __init__(self, kind: str, name: str, known: list[str] | None = None):
        self.kind = kind
        self.name = name
        hint = f"; known: {', '.join(known)}" if known else ""
        super().__init__(f"unknown {kind} {short_repr(name)}{hint}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class PreconditionError(GradalignError):
    """The request is well formed but the system is not in a state to serve it (FAILED_PRECONDITION)."""

    code = "FAILED_PRECONDITION"


class TokenizerMismatchError(PreconditionError):
    """A teacher does not share the student's tokenizer (FAILED_PRECONDITION); says what differs."""


class BudgetError(GradalignError):
    """A request would exceed a configured resource limit (RESOURCE_EXHAUSTED)."""

    code = "RESOURCE_EXHAUSTED"


class Cancelled(GradalignError):
    """The caller cancelled or its deadline passed (CANCELLED / DEADLINE_EXCEEDED)."""

    code = "CANCELLED"

    def __init__(self, reason: str = "cancelled"):
        self.reason = reason
        super().__init__(reason)
        if reason == "deadline_exceeded":
            self.code = "DEADLINE_EXCEEDED"
