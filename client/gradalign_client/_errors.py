"""The SDK's one exception type, made from a gRPC status."""

from __future__ import annotations

import grpc

__all__ = ["GradalignError", "from_rpc_error"]


class GradalignError(Exception):
    """A failed call: ``code`` is the gRPC status name, ``details`` the server's message.

    Codes the server uses on purpose: ``INVALID_ARGUMENT`` (the message names the field),
    ``NOT_FOUND`` (unknown tree or teacher), ``FAILED_PRECONDITION`` (a teacher's tokenizer differs
    from the student's), ``RESOURCE_EXHAUSTED`` (queue full or request over budget: retry later or
    ask for less), ``DEADLINE_EXCEEDED``, ``CANCELLED``, ``UNAUTHENTICATED`` (wrong token),
    ``UNAVAILABLE`` (server not reachable, loading models or shutting down). ``INTERNAL`` means a
    server bug. ``retryable`` is true for the codes where the same call may succeed later.
    """

    RETRYABLE = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})

    def __init__(self, code: str, details: str):
        self.code = code
        self.details = details
        super().__init__(f"{code}: {details}")

    @property
    def retryable(self) -> bool:
        return self.code in self.RETRYABLE

    @property
    def unreachable(self) -> bool:
        """True when no server answered at the target (refused, unresolvable, timed out connecting)."""
        return self.code == "UNAVAILABLE" and _looks_unreachable(self.details)


def _looks_unreachable(details: str) -> bool:
    text = details.lower()
    return any(
        s in text
        for s in (
            "failed to connect",
            "connection refused",
            "dns resolution",
            "errors resolving",
            "lookup failed",
            "name not found",
            "connect failed",
            "unreachable",
            "deadline exceeded while connecting",
        )
    )


def from_rpc_error(exc: grpc.RpcError) -> GradalignError:
    """Convert a grpc.RpcError (sync or aio) to GradalignError, keeping the status name."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    return GradalignError(name, details or "")
