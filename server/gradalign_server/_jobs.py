"""The job manager: a bounded queue in front of one worker thread that owns the engine.

torch models are not safe to drive from several threads at once, so every engine call runs on the
worker; RPC threads submit a job and wait for its future. A full queue is refused at once
(RESOURCE_EXHAUSTED) rather than letting callers pile up. Each job carries a
:class:`~gradalign_engine.backends.base.CancelToken`: the RPC layer cancels it when its call is
cancelled or its deadline passes; a queued job whose token is cancelled never starts, a running
one stops at the engine's next check.

Knows nothing of gRPC or protobuf.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from gradalign_engine.backends.base import CancelToken
from gradalign_engine.errors import Cancelled

from ._errors import ServiceError

__all__ = ["Job", "JobManager"]


@dataclass
class Job:
    """One unit of engine work."""

    kind: str  # "build_tree" or "score_tree": the metrics label
    fn: Callable[[CancelToken], Any]
    cancel: CancelToken
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)


_STOP = object()


class JobManager:
    """Runs submitted jobs one at a time, in order, on a dedicated worker thread.

    Parameters
    ----------
    max_queue : int
        Jobs that may wait behind the running one; one more is refused with RESOURCE_EXHAUSTED.
    on_change : callable, optional
        ``on_change(running, queued)`` after every change (feeds the metrics gauges).
    on_done : callable, optional
        ``on_done(job, seconds, error)`` after each job ran (error None on success).
    """

    def __init__(
        self,
        max_queue: int = 16,
        on_change: Callable[[int, int], None] | None = None,
        on_done: Callable[[Job, float, BaseException | None], None] | None = None,
    ):
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self.max_queue = max_queue
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._queued = 0
        self._running = 0
        self._accepting = True
        self._on_change = on_change or (lambda running, queued: None)
        self._on_done = on_done or (lambda job, seconds, error: None)
        self._worker = threading.Thread(target=self._run, name="gradalign-engine-worker", daemon=True)
        self._worker.start()

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def running(self) -> int:
        return self._running

    def submit(self, kind: str, fn: Callable[[CancelToken], Any], cancel: CancelToken | None = None) -> Job:
        """Queue ``fn(cancel)`` for the worker; raise ServiceError(RESOURCE_EXHAUSTED) when full."""
        job = Job(kind=kind, fn=fn, cancel=cancel or CancelToken())
        with self._lock:
            if not self._accepting:
                raise ServiceError("UNAVAILABLE", "the server is shutting down")
            if self._queued >= self.max_queue:
                raise ServiceError(
                    "RESOURCE_EXHAUSTED",
                    f"job queue full ({self._queued} waiting, {self._running} running; limit "
                    f"{self.max_queue}): retry later",
                )
            self._queued += 1
            self._queue.put(job)
            running, queued = self._running, self._queued
        self._on_change(running, queued)
        return job

    def run(self, kind: str, fn: Callable[[CancelToken], Any], cancel: CancelToken | None = None) -> Any:
        """Submit and wait for the result (re-raising the job's exception)."""
        return self.submit(kind, fn, cancel).future.result()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            with self._lock:
                self._queued -= 1
                self._running += 1
                running, queued = self._running, self._queued
            self._on_change(running, queued)
            started = time.monotonic()
            error: BaseException | None = None
            try:
                if job.cancel.cancelled:  # the caller gave up while the job waited
                    raise Cancelled(job.cancel.reason)
                result = job.fn(job.cancel)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                error = exc
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
            finally:
                self._on_done(job, time.monotonic() - started, error)  # before the job stops counting as running
                with self._lock:
                    self._running -= 1
                    running, queued = self._running, self._queued
                self._on_change(running, queued)

    def shutdown(self, timeout: float | None = None, cancel_pending: bool = True) -> None:
        """Stop accepting jobs, cancel those still waiting (or let them run), and join the worker."""
        with self._lock:
            self._accepting = False
        if cancel_pending:
            for job in list(self._queue.queue):
                if isinstance(job, Job):
                    job.cancel.cancel("cancelled")
        self._queue.put(_STOP)
        self._worker.join(timeout)
