"""The job manager: a bounded queue in front of a pool of engine workers, one thread per worker.

Each worker thread is bound to one *engine handle* and alone drives it: the local Engine in-process
(one handle: torch models are not safe to drive from several threads at once), or a proxy to one Ray
actor (``gradalign_engine.ray_executor.RayWorker``, one per actor). RPC threads submit a job and wait
for it; every worker takes the next job from the one queue. A full queue is refused at once
(RESOURCE_EXHAUSTED) rather than letting callers pile up.

Jobs. A job's function is called on the worker thread as ``fn(engine, cancel, notify)``: ``engine``
is that worker's handle, ``notify(**fields)`` hands a progress event to every waiter that asked for
them (``listener`` of :meth:`JobManager.run`). What the function writes (the store) is written in
this process, after the engine call returned.

Cancellation. Each job carries a :class:`~gradalign_engine.backends.base.CancelToken`. A waiter
whose own token is cancelled (its call was cancelled or its deadline passed) stops waiting at once;
a job nobody waits for any more is cancelled, stops holding a queue slot at once, never starts if it
was queued, and stops at the engine's next check if it was running (the engine checks between
forward slices of about a quarter second).

Single flight. :meth:`JobManager.run` with a ``key`` joins an identical job in flight instead of
submitting a second one: identical concurrent requests share one computation, and the shared job is
cancelled only when its last waiter leaves.

Lost workers. A job whose worker was lost (the handle raised ``WorkerLost``: a Ray actor died) goes
back to the front of the queue for the next free worker, at most ``max_retries`` times, then fails
with UNAVAILABLE; the lost worker's handle is ``recover()``-ed (a fresh actor) before it takes work
again. Nothing of the failed attempt was written: writes follow the engine call.

Knows nothing of gRPC, protobuf or Ray.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import structlog

from gradalign_engine.backends.base import CancelToken
from gradalign_engine.errors import Cancelled
from gradalign_engine.ray_executor import MAX_RETRIES, WorkerLost

from ._errors import ServiceError

__all__ = ["Job", "JobManager"]

log = structlog.get_logger("gradalign.server")

_POLL_S = 0.05  # how often a waiter looks at its own cancel token
_RECOVER_BACKOFF_S = 5.0  # after a failed replacement of a lost worker, before the next try


@dataclass(eq=False)  # identity: jobs are found in the queue by who they are, not by their fields
class Job:
    """One unit of engine work and the callers waiting for it."""

    kind: str  # "build_tree", "score_tree" or "estimate": the metrics label
    fn: Callable[[Any, CancelToken, Callable[..., None]], Any]
    cancel: CancelToken
    key: Hashable | None = None
    waiters: int = 0
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)
    listeners: list[Callable[..., None]] = field(default_factory=list)
    attempts: int = 0  # started so far (more than one: a worker was lost under it)

    def notify(self, **event: Any) -> None:
        """Hand a progress event to every listener (a failing listener never fails the job)."""
        for listener in list(self.listeners):
            try:
                listener(**event)
            except Exception:  # noqa: BLE001 - a client that went away must not stop the work
                pass


class JobManager:
    """Runs submitted jobs in order on a pool of worker threads, one per engine handle.

    Parameters
    ----------
    max_queue : int
        Jobs that may wait behind the running ones; one more is refused with RESOURCE_EXHAUSTED.
        Cancelled jobs do not count.
    on_change : callable, optional
        ``on_change(running, queued)`` after every change (feeds the metrics gauges).
    on_done : callable, optional
        ``on_done(job, seconds, error)`` after each job ran (error None on success; a retried attempt
        is not reported, the final one is).
    engines : sequence, optional
        Engine handles to start workers for now; otherwise :meth:`start` does once they are loaded.
        Jobs submitted before that wait in the queue.
    max_retries : int
        Times a job goes back to the queue after its worker was lost.
    """

    def __init__(
        self,
        max_queue: int = 16,
        on_change: Callable[[int, int], None] | None = None,
        on_done: Callable[[Job, float, BaseException | None], None] | None = None,
        engines: Sequence[Any] | None = None,
        max_retries: int = MAX_RETRIES,
    ):
        if max_queue < 0:
            raise ValueError(f"max_queue={max_queue}: must be >= 0")
        if max_retries < 0:
            raise ValueError(f"max_retries={max_retries}: must be >= 0")
        self.max_queue, self.max_retries = max_queue, max_retries
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: collections.deque[Job] = collections.deque()  # submitted, not started
        self._current: dict[int, Job] = {}  # worker index -> the job it runs
        self._flights: dict[Hashable, Job] = {}
        self._workers: list[threading.Thread] = []
        self._accepting = True
        self._stopping = False
        self.retries = 0  # jobs put back after a lost worker (tests, logs)
        self._on_change = on_change or (lambda running, queued: None)
        self._on_done = on_done or (lambda job, seconds, error: None)
        if engines is not None:
            self.start(engines)

    def start(self, engines: Sequence[Any]) -> None:
        """One worker thread per engine handle; called once."""
        if not engines:
            raise ValueError("start() needs at least one engine handle")
        with self._lock:
            if self._workers:
                raise RuntimeError("the workers are already started")
            for index, engine in enumerate(engines):
                name = "gradalign-engine-worker" + (f"-{index}" if len(engines) > 1 else "")
                self._workers.append(threading.Thread(target=self._run, args=(index, engine), name=name, daemon=True))
        for thread in self._workers:
            thread.start()

    # ------------------------------------------------------------------ state
    @property
    def queued(self) -> int:
        """Jobs waiting to start that someone still waits for."""
        with self._lock:
            return self._live_waiting()

    @property
    def running(self) -> int:
        """Busy workers (a cancelled job included, until it reaches its next check)."""
        with self._lock:
            return len(self._current)

    @property
    def workers(self) -> int:
        return len(self._workers)

    @property
    def worker_alive(self) -> bool:
        """True while every worker thread runs (False before :meth:`start`)."""
        return bool(self._workers) and all(t.is_alive() for t in self._workers)

    def _live_waiting(self) -> int:
        return sum(not job.cancel.cancelled for job in self._waiting)

    def _changed(self) -> None:
        with self._lock:
            running = len(self._current)
            queued = self._live_waiting()
        self._on_change(running, queued)

    # ------------------------------------------------------------------ submitting and waiting
    def submit(self, kind: str, fn: Callable[..., Any], cancel: CancelToken | None = None) -> Job:
        """Queue ``fn(engine, cancel, notify)``; raise ServiceError(RESOURCE_EXHAUSTED) when full."""
        with self._lock:
            job = self._submit_locked(kind, fn, cancel or CancelToken(), None)
        self._changed()
        return job

    def _submit_locked(self, kind, fn, cancel: CancelToken, key) -> Job:
        if not self._accepting:
            raise ServiceError("UNAVAILABLE", "the server is shutting down")
        live = self._live_waiting()
        if live >= self.max_queue:
            raise ServiceError(
                "RESOURCE_EXHAUSTED",
                f"job queue full ({live} waiting, {len(self._current)} running; limit {self.max_queue}): retry later",
            )
        job = Job(kind=kind, fn=fn, cancel=cancel, key=key)
        self._waiting.append(job)
        self._wake.notify()
        return job

    def run(
        self,
        kind: str,
        fn: Callable[..., Any],
        cancel: CancelToken | None = None,
        key: Hashable | None = None,
        listener: Callable[..., None] | None = None,
    ) -> Any:
        """Run ``fn(engine, cancel, notify)`` on a worker and wait for its result (re-raising its exception).

        With ``key``, join an identical job in flight rather than submitting another. Raises
        Cancelled as soon as ``cancel`` is cancelled, whatever the job is doing. ``listener(**event)``
        receives the job's progress events, and ``stage="queued"`` events while it waits.
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
            if listener is not None:
                job.listeners.append(listener)
        self._changed()
        try:
            return self._wait(job, mine, listener)
        finally:
            self._leave(job, mine)
            if listener is not None:
                with self._lock:
                    job.listeners.remove(listener)

    def _wait(self, job: Job, mine: CancelToken, listener) -> Any:
        last_ahead = None
        while True:
            mine.raise_if_cancelled()
            if listener is not None:
                ahead = self._ahead_of(job)
                if ahead is not None and ahead != last_ahead:
                    listener(stage="queued", queued_ahead=ahead)
                    last_ahead = ahead
            try:
                return job.future.result(timeout=_POLL_S)
            except FutureTimeout:
                continue

    def _ahead_of(self, job: Job) -> int | None:
        """Live jobs ahead of a waiting ``job`` (the running ones included); None once it started."""
        with self._lock:
            if job not in self._waiting:
                return None
            ahead = 0
            for other in self._waiting:
                if other is job:
                    break
                ahead += not other.cancel.cancelled
            return ahead + len(self._current)

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

    # ------------------------------------------------------------------ the workers
    def _next(self, index: int) -> Job | None:
        """The next job for worker ``index`` (None: stop). The queue is drained before stopping, so
        pending jobs end (cancelled ones with Cancelled) rather than leaving their waiters hanging."""
        with self._lock:
            while not self._waiting and not self._stopping:
                self._wake.wait()
            if not self._waiting:
                return None
            job = self._waiting.popleft()
            job.attempts += 1
            self._current[index] = job
        self._changed()
        return job

    def _run(self, index: int, engine: Any) -> None:
        while (job := self._next(index)) is not None:
            lost = self._run_one(index, engine, job)
            if lost and not self._recover(index, engine):
                return

    def _run_one(self, index: int, engine: Any, job: Job) -> bool:
        """Run ``job`` on ``engine``; True when the worker was lost under it."""
        started = time.monotonic()
        error: BaseException | None = None
        retried = lost = False
        try:
            if job.cancel.cancelled:  # every caller gave up while the job waited
                raise Cancelled(job.cancel.reason)
            result = job.fn(engine, job.cancel, job.notify)
        except WorkerLost as exc:
            lost = True
            retried = self._retry(job, exc, index)
            if not retried:
                error = Cancelled(job.cancel.reason) if job.cancel.cancelled else self._gave_up(job, exc)
                job.future.set_exception(error)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting callers
            error = exc
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)
        finally:
            if not retried:  # before the job stops counting as running
                self._on_done(job, time.monotonic() - started, error)
            with self._lock:
                self._current.pop(index, None)
            self._changed()
        return lost

    def _retry(self, job: Job, exc: WorkerLost, index: int) -> bool:
        """Put ``job`` back at the front of the queue for another worker, unless it is done with."""
        with self._lock:
            if job.cancel.cancelled or job.attempts > self.max_retries:
                return False
            self._waiting.appendleft(job)
            self.retries += 1
            self._wake.notify()
        log.warning("job_retried", kind=job.kind, attempt=job.attempts, worker=index, error=str(exc))
        return True

    def _gave_up(self, job: Job, exc: WorkerLost) -> ServiceError:
        log.error("job_failed_worker_lost", kind=job.kind, attempts=job.attempts, error=str(exc))
        return ServiceError(
            "UNAVAILABLE", f"an engine worker was lost under this job {job.attempts} times; last: {exc}: retry later"
        )

    def _recover(self, index: int, engine: Any) -> bool:
        """Bring a lost worker's handle back before it takes work again; False when stopping."""
        recover = getattr(engine, "recover", None)
        if recover is None:  # a local engine is never lost; nothing to bring back
            return True
        while not self._stopping:
            try:
                recover(lambda: self._stopping)
                return True
            except Exception as exc:  # noqa: BLE001 - logged; tried again until the server stops
                log.error("worker_recovery_failed", worker=index, error=str(exc), retry_in_s=_RECOVER_BACKOFF_S)
            with self._lock:
                self._wake.wait_for(lambda: self._stopping, timeout=_RECOVER_BACKOFF_S)
        return False

    def shutdown(self, timeout: float | None = None, cancel_pending: bool = True, cancel_running: bool = True) -> bool:
        """Stop accepting jobs, cancel them, and join the workers for up to ``timeout`` s in all.

        Returns True when every worker has stopped (False: a job is still running past its cancel).
        """
        with self._lock:
            self._accepting = False
            self._stopping = True
            jobs = list(self._waiting) if cancel_pending else []
            if cancel_running:
                jobs.extend(self._current.values())
            orphans = [] if self._workers else list(self._waiting)  # no worker will ever take these
            self._waiting = collections.deque(j for j in self._waiting if j not in orphans)
            self._wake.notify_all()
        for job in jobs + orphans:
            job.cancel.cancel("cancelled")
        for job in orphans:
            job.future.set_exception(Cancelled("the server is shutting down"))
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._workers:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._workers)
