"""Mapping of exceptions to gRPC status codes, in one place.

Engine exceptions carry their status name in ``.code`` (gradalign_engine.errors); the service adds
:class:`ServiceError` for what only it knows (queue full, loading, authentication). Anything else is
a bug: INTERNAL, with the traceback logged by the caller.
"""

from __future__ import annotations

import grpc

__all__ = ["ServiceError", "status_of"]


class ServiceError(Exception):
    """A failure the service itself detects, with the status name to answer with."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str, bool]:
    """(status code, details, is_bug) for an exception raised while serving a call."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code in grpc.StatusCode.__members__ and code not in ("OK", "INTERNAL", "UNKNOWN"):
        return grpc.StatusCode[code], str(exc), False
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log", True
