"""The engine actor (:class:`EngineActor`, one resident Engine inside a Ray actor) and the counters the
driver keeps of each actor's work.

The actor answers every call with plain data (``{"ok": ...}`` or ``{"error": pack_error(...)}``), so the
driver never unpickles an actor's exception. Ray itself is imported only where an actor asks for its
node address. Knows nothing of job queues, storage or gRPC.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .backends.base import CancelToken
from .errors import ConfigError
from .ray_config import _COUNTERS, _HEAVY, _LIGHT, pack_error
from .tree import RolloutTree

__all__ = ["EngineActor", "RemoteCounters", "SummedCounters"]


# ---------------------------------------------------------------------------------------------- the actor
class EngineActor:
    """Runs inside a Ray actor: one Engine with its models resident.

    One heavy call at a time (``heavy``: build, score, estimate; a lock keeps a call that arrives while
    a cancelled one winds down from driving the models beside it); light calls (``light``,
    ``progress``, ``cancel``, ``ping``) run on the actor's other threads meanwhile.
    """

    def __init__(self, config) -> None:
        self._heavy_lock = threading.Lock()
        self._lock = threading.Lock()
        self._cancels: dict[str, CancelToken] = {}
        self._progress: dict[str, dict[str, Any]] = {}
        self._load_error: dict[str, str] | None = None
        self.engine = None
        started = time.monotonic()
        try:
            from .pipeline import Engine

            self.engine = Engine(config)
        except BaseException as exc:  # noqa: BLE001 - reported by ping() rather than as a dead actor
            self._load_error = pack_error(exc)
        self._load_seconds = time.monotonic() - started

    def ping(self) -> dict[str, Any]:
        """Who this actor is (pid, node, model hashes), or the error its models failed to load with."""
        if self._load_error is not None:
            return {"error": self._load_error}
        models = [(m.name, m.model_hash) for m in self.engine.list_models()]
        return {"ok": {"pid": os.getpid(), "node": _node_ip(), "models": models, "load_s": self._load_seconds}}

    def static(self) -> dict[str, Any]:
        """What never changes while the models are loaded: config, models, receipt."""
        return self._answer(
            lambda: {
                "config": self.engine.config,
                "models": self.engine.list_models(),
                "receipt": self.engine.receipt(),
            }
        )

    def light(self, method: str, args: tuple, kwargs: dict) -> dict[str, Any]:
        """A cheap engine query (cache keys, question checks): no sampling."""
        if method not in _LIGHT:
            return {"error": pack_error(ConfigError("method", method, f"not a light call; one of {_LIGHT}"))}
        return self._answer(lambda: getattr(self.engine, method)(*args, **kwargs))

    def status(self) -> dict[str, Any]:
        """Whether a heavy call holds the models now, and the work counters (operators, tests)."""
        return {"busy": self._heavy_lock.locked(), "pid": os.getpid(), "counters": self._counters()}

    def progress(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            return copy.copy(self._progress.get(job_id))

    def cancel(self, job_id: str, reason: str = "cancelled") -> None:
        """Cancel a heavy call, running or not yet started (the engine stops at its next check)."""
        with self._lock:
            token = self._cancels.setdefault(job_id, CancelToken())
        token.cancel(reason)

    def heavy(self, job_id: str, method: str, args: tuple, kwargs: dict) -> dict[str, Any]:
        """Run one engine operation; the reply carries the result or error, the counters and the last progress."""
        with self._lock:
            cancel = self._cancels.setdefault(job_id, CancelToken())
            self._progress[job_id] = {"event": None, "counters": self._counters()}
        try:
            with self._heavy_lock:
                reply = self._answer(lambda: self._run(method, args, kwargs, cancel, self._reporter(job_id)))
        finally:
            with self._lock:
                self._cancels.pop(job_id, None)
                last = self._progress.pop(job_id, {})
        return {**reply, "counters": self._counters(), "event": last.get("event")}

    # the actor's own helpers
    def _run(self, method, args, kwargs, cancel: CancelToken, progress):
        cancel.raise_if_cancelled()  # cancelled while it waited for the lock
        if method == "build_tree":
            return self.engine.build_tree(*args, cancel=cancel, progress=progress, **kwargs).to_dict()
        if method == "score_tree":
            tree, *rest = args
            return self.engine.score_tree(
                RolloutTree.from_dict(tree), *rest, cancel=cancel, progress=progress, **kwargs
            )
        if method == "estimate":
            return self.engine.estimate(*args, **kwargs)
        raise ConfigError("method", method, f"not a heavy call; one of {_HEAVY}")

    def _reporter(self, job_id: str) -> Callable[[str, int, int], None]:
        def report(stage: str, done: int, total: int) -> None:
            with self._lock:
                self._progress[job_id] = {"event": (stage, done, total), "counters": self._counters()}

        return report

    def _counters(self) -> dict[str, int]:
        return self.engine.student.counters.snapshot() if self.engine is not None else {}

    def _answer(self, fn: Callable[[], Any]) -> dict[str, Any]:
        if self._load_error is not None:
            return {"error": self._load_error}
        try:
            return {"ok": fn()}
        except BaseException as exc:  # noqa: BLE001 - travels to the driver as data
            return {"error": pack_error(exc)}


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - informational only
        return "?"


# ---------------------------------------------------------------------------------------------- counters
class RemoteCounters:
    """A worker's work counters as its actor last reported them, summed over the actors it has had.

    The server reads ``engine.student.counters`` to put tokens in progress events; a replacement
    actor starts from zero, so what earlier actors counted is kept.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._retired = dict.fromkeys(_COUNTERS, 0)
        self._last = dict.fromkeys(_COUNTERS, 0)

    def update(self, snapshot: Mapping[str, int] | None) -> None:
        if snapshot:
            with self._lock:
                self._last = {k: int(snapshot.get(k, 0)) for k in _COUNTERS}

    def retire(self) -> None:
        """The actor is gone: keep its counts, start the next one from zero."""
        with self._lock:
            self._retired = {k: self._retired[k] + self._last[k] for k in _COUNTERS}
            self._last = dict.fromkeys(_COUNTERS, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {k: self._retired[k] + self._last[k] for k in _COUNTERS}


class SummedCounters:
    """The counters of several workers, added up (``RemoteEngine.student.counters``)."""

    def __init__(self, parts: Sequence[RemoteCounters]):
        self._parts = list(parts)

    def snapshot(self) -> dict[str, int]:
        snaps = [p.snapshot() for p in self._parts]
        return {k: sum(s[k] for s in snaps) for k in _COUNTERS}


@dataclass
class _Student:
    """What a worker handle offers where an Engine has ``student``: only the counters."""

    counters: Any
