"""The job manager: a bounded queue in front of one worker thread that owns the engine.

torch models are not safe to drive from several threads at once, so every engine call runs on the
worker; RPC threads submit a job and wait for it. A full queue is refused at once
(RESOURCE_EXHAUSTED) rather than letting callers pile up.

Cancellation. Each job carries a :class:`~gradalign_engine.backends.base.CancelToken`. A waiter
whose own token is cancelled (its call was cancelled or its deadline passed) stops waiting at once;
a job nobody waits for any more is cancelled, stops holding a queue slot at once, never starts if it
was queued, and stops at the engine's next check if it was running (the engine checks between
forward slices of about a quarter second).

Single flight. :meth:`JobManager.run` with a ``key`` joins an identical job already in flight
instead of submitting a second one: identical concurrent requests share one computation, and the
shared job is cancelled only when its last waiter leaves.

Knows nothing of gRPC or protobuf.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from gradalign_engine.backends.base import CancelToken
from gradalign_engine.errors import Cancelled

from ._errors import ServiceError

__all__ = ["Job", "JobManager"]

_POLL_S = 0.05  # how often a waiter looks at its own cancel token


@dataclass
class Job:
    """One unit of engine work and the callers waiting for it."""

    kind: str  # "build_tree" or "score_tree": the metrics label
    fn: Callable[[CancelToken], Any]
    cancel: CancelToken
    key: Hashable | None = None
    waiters: int = 0
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)


_STOP = object()


class JobManager:
    """Runs submitted jobs one at a time, in order, on a dedicated worker thread.

    Parameters
    ----------
    max_queue : int
        Jobs that may wait behind the running one; one more is refused with RESOURCE_EXHAUSTED.
        Cancelled jobs do not count.
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
        self._waiting: collections.deque[Job] = collections.deque()  # submitted, not started
        self._current: Job | None = None
        self._flights: dict[Hashable, Job] = {}
        self._accepting = True
        self._on_change = on_change or (lambda running, queued: None)
        self._on_done = on_done or (lambda job, seconds, error: None)
        self._worker = threading.Thread(target=self._run, name="gradalign-engine-worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ state
    @property
    def queued(self) -> int:
        """Jobs waiting to start that someone still waits for."""
        with self._lock:
            return self._live_waiting()

    @property
    def running(self) -> int:
        """1 while the worker runs a job (a cancelled one included, until it reaches its next check)."""
        with self._lock:
            return int(self._current is not None)

    @property
    def worker_alive(self) -> bool:
        return self._worker.is_alive()

    def _live_waiting(self) -> int:
        return sum(not job.cancel.cancelled for job in self._waiting)

    def _changed(self) -> None:
        with self._lock:
            running = int(self._current is not None)
            queued = self._live_waiting()
        self._on_change(running, queued)

    # ------------------------------------------------------------------ submitting and waiting
    def submit(self, kind: str, fn: Callable[[CancelToken], Any], cancel: CancelToken | None = None) -> Job:
        """Queue ``fn(cancel)`` for the worker; raise ServiceError(RESOURCE_EXHAUSTED) when full."""
        with self._lock:
            job = self._submit_locked(kind, fn, cancel or CancelToken(), None)
        self._changed()
        return job

    def _submit_locked(self, kind, fn, cancel: CancelToken, key) -> Job:
        if not self._accepting:
            raise ServiceError("UNAVAILABLE", "the server is shutting down")
        live = self._live_waiting()
        if live >= self.max_queue:
            running = int(self._current is not None)
            raise ServiceError(
                "RESOURCE_EXHAUSTED",
                f"job queue full ({live} waiting, {running} running; limit {self.max_queue}): retry later",
            )
        job = Job(kind=kind, fn=fn, cancel=cancel, key=key)
        self._waiting.append(job)
        self._queue.put(job)
        return job

    def run(
        self,
        kind: str,
        fn: Callable[[CancelToken], Any],
        cancel: CancelToken | None = None,
        key: Hashable | None = None,
    ) -> Any:
        """Run ``fn`` on the worker and wait for its result (re-raising its exception).

        With ``key``, join an identical job in flight rather than submitting another. Raises
        Cancelled as soon as ``cancel`` is cancelled, whatever the job is doing.
        """
        mine = cancel or CancelToken()
        with self._lock:
            job = self._flights.get(key) if key is not None else None
            if job is None or job.cancel.cancelled or job.future.done():
                job = self._submit_locked(kind, fn, CancelToken(), key)
                if key is not None:
                    self._flights[key] = job
                    job.future.add_done_callback(lambda _f, k=key, j=job: self._forget(k, j))
            job.waiters += 1
        self._changed()
        try:
            return self._wait(job, mine)
        finally:
            self._leave(job, mine)

    def _wait(self, job: Job, mine: CancelToken) -> Any:
        while True:
            mine.raise_if_cancelled()
            try:
                return job.future.result(timeout=_POLL_S)
            except FutureTimeout:
                continue

    def _leave(self, job: Job, mine: CancelToken) -> None:
        """One waiter fewer; the last one to leave before the job ended cancels it."""
        with self._lock:
            job.waiters -= 1
            abandon = job.waiters == 0 and not job.future.done()
        if abandon:
            job.cancel.cancel(mine.reason if mine.cancelled else "cancelled")
            self._changed()

    def _forget(self, key: Hashable, job: Job) -> None:
        with self._lock:
            if self._flights.get(key) is job:
                del self._flights[key]

    # ------------------------------------------------------------------ the worker
    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            with self._lock:
                self._waiting.remove(job)
                self._current = job
            self._changed()
            started = time.monotonic()
            error: BaseException | None = None
            try:
                if job.cancel.cancelled:  # every caller gave up while the job waited
                    raise Cancelled(job.cancel.reason)
                result = job.fn(job.cancel)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting callers
                error = exc
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
            finally:
                self._on_done(job, time.monotonic() - started, error)  # before the job stops counting as running
                with self._lock:
                    self._current = None
                self._changed()

    def shutdown(self, timeout: float | None = None, cancel_pending: bool = True, cancel_running: bool = True) -> bool:
        """Stop accepting jobs, cancel them, and join the worker for up to ``timeout`` s.

        Returns True when the worker has stopped (False: a job is still running past its cancel).
        """
        with self._lock:
            self._accepting = False
            jobs = list(self._waiting) if cancel_pending else []
            if cancel_running and self._current is not None:
                jobs.append(self._current)
        for job in jobs:
            job.cancel.cancel("cancelled")
        self._queue.put(_STOP)
        self._worker.join(timeout)
        return not self._worker.is_alive()
