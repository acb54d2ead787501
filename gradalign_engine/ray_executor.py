"""Engine workers as Ray actors: ``gradalign serve --executor ray`` and ``gradalign analyze --executor ray``.

Role. Each actor (:class:`~.ray_actor.EngineActor`) builds one :class:`~.pipeline.Engine` from the run
config when it starts and keeps its models resident, on the GPU share it declared (``num_gpus``).
This module is the driver side, and the one import for the rest of gradalign (it re-exports the
settings and errors of :mod:`.ray_config`, the actor of :mod:`.ray_actor` and :func:`map_in_order`
of :mod:`.ray_sharding`):

- :class:`RayWorker`, the handle on one actor, has the engine's heavy calls (``build_tree``,
  ``score_tree``, ``estimate``) with the engine's own signatures. It waits for them in short slices,
  forwards the actor's progress, passes a cancel on to the actor, and turns a dead actor into
  :class:`WorkerLost`; ``recover()`` replaces the actor.
- :class:`RemoteEngine`, the engine as a front end without models sees it: the config, the models and
  the receipt fetched once at start, cache keys and question checks answered by a light call on any
  actor, and the workers.
- :func:`~.ray_sharding.map_in_order` shards items over the workers (``analyze``), retrying an item
  whose worker was lost, and yields results in item order.

Results travel as plain data (a tree as its ``to_dict()``, records as dataclasses) and errors as their
gRPC code and message, so the driver never unpickles an actor's exception.

What it does not know: job queues, storage, gRPC, logging libraries (events go to a callback). Ray is
imported only inside the functions that use it: importing this module costs nothing, and gradalign runs
without Ray installed unless this executor is selected.
"""

from __future__ import annotations

import copy
import itertools
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .backends.base import CancelToken
from .errors import Cancelled, GradalignError, PreconditionError
from .ray_actor import EngineActor, RemoteCounters, SummedCounters, _Student
from .ray_config import (
    MAX_CONCURRENCY,
    MAX_RETRIES,
    POLL_S,
    PROGRESS_S,
    RayExecutorConfig,
    RemoteEngineError,
    WorkerLost,
    _unwrap,
    add_executor_arguments,
    executor_from_args,
)
from .ray_sharding import map_in_order
from .tree import RolloutTree

__all__ = [
    "MAX_RETRIES",
    "EngineActor",
    "RayExecutorConfig",
    "RayWorker",
    "RemoteEngine",
    "RemoteEngineError",
    "WorkerLost",
    "add_executor_arguments",
    "executor_from_args",
    "map_in_order",
]


# ---------------------------------------------------------------------------------------------- one worker
def _lost_errors() -> tuple[type[BaseException], ...]:
    from ray import exceptions as rx

    names = ("RayActorError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError")
    return tuple(getattr(rx, n) for n in names if hasattr(rx, n))


class RayWorker:
    """The driver's handle on one engine actor: the heavy engine calls, waited for in bounded slices.

    One caller at a time (the server binds one worker thread to each handle). ``pid`` and ``node``
    name the actor's process.
    """

    def __init__(self, owner: RemoteEngine, index: int):
        self.owner, self.index = owner, index
        self.actor: Any = None
        self.pid: int | None = None
        self.node: str | None = None
        self.ready = False  # False while the actor is started or replaced
        self.busy = False  # True while a heavy call is in flight
        self.counters = RemoteCounters()
        self.student = _Student(self.counters)

    def __repr__(self) -> str:
        return f"RayWorker({self.index}, pid={self.pid}, node={self.node})"

    # the engine's heavy calls, same signatures
    def build_tree(
        self, question, *, rollouts=None, sampling=None, seed=None, target_teachers=None, cancel=None, progress=None
    ) -> RolloutTree:
        kwargs = {"rollouts": rollouts, "sampling": sampling, "seed": seed, "target_teachers": target_teachers}
        return RolloutTree.from_dict(self.call("build_tree", (question,), kwargs, cancel, progress))

    def score_tree(self, tree: RolloutTree, teachers, methods, *, analysis=None, cancel=None, progress=None):
        args = (tree.to_dict(), list(teachers), list(methods))
        return self.call("score_tree", args, {"analysis": analysis}, cancel, progress)

    def estimate(self, questions, *, rollouts=None, sampling=None, target_teachers=None, teachers=None):
        kwargs = {"rollouts": rollouts, "sampling": sampling, "target_teachers": target_teachers, "teachers": teachers}
        return self.call("estimate", (list(questions),), kwargs, None, None)

    def recover(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Replace a lost actor by a fresh one (models loaded again); WorkerLost if that fails."""
        self.owner.replace(self, should_stop)

    # calling the actor
    def light(self, method: str, args: tuple = (), kwargs: Mapping[str, Any] | None = None) -> Any:
        actor = self.actor
        return _unwrap(self._get(actor.light.remote(method, tuple(args), dict(kwargs or {}))))

    def call(self, method: str, args: tuple, kwargs: dict, cancel: CancelToken | None, progress) -> Any:
        """One heavy call: wait in slices of POLL_S, forward progress, cancel on the actor when asked."""
        actor, job_id = self.actor, uuid.uuid4().hex
        if not self.ready or actor is None:
            raise WorkerLost(f"engine worker {self.index} is not running (being replaced)")
        self.busy = True
        try:
            reply = self._wait(actor, actor.heavy.remote(job_id, method, args, kwargs), job_id, cancel, progress)
        finally:
            self.busy = False
        return _unwrap(reply)

    def _wait(self, actor, ref, job_id: str, cancel: CancelToken | None, progress) -> dict[str, Any]:
        import ray

        seen: tuple | None = None  # the last progress event forwarded
        asked, asked_at = None, time.monotonic()
        while True:
            ready, _ = ray.wait([ref] if asked is None else [ref, asked], num_returns=1, timeout=POLL_S)
            if ref in ready:
                reply = self._get(ref)
                self._forward(reply, seen, progress)
                return reply
            if cancel is not None and cancel.cancelled:
                actor.cancel.remote(job_id, cancel.reason)  # the actor's engine stops at its next check
                raise Cancelled(cancel.reason)
            if asked is not None and asked in ready:
                state, asked = self._get_quietly(asked), None
                seen = self._forward(state, seen, progress) if state else seen
            if progress is not None and asked is None and time.monotonic() - asked_at >= PROGRESS_S:
                asked, asked_at = actor.progress.remote(job_id), time.monotonic()

    def _forward(self, state: Mapping[str, Any], seen: tuple | None, progress) -> tuple | None:
        self.counters.update(state.get("counters"))
        event = state.get("event")
        if progress is not None and event is not None and tuple(event) != seen:
            progress(*event)
            return tuple(event)
        return seen

    def _get(self, ref) -> dict[str, Any]:
        import ray
        from ray.exceptions import GetTimeoutError, RayTaskError

        try:
            return ray.get(ref, timeout=self.owner.executor.call_timeout_s)
        except _lost_errors() as exc:
            raise WorkerLost(f"engine worker {self.index} (pid {self.pid}, node {self.node}) was lost: {_first(exc)}")
        except GetTimeoutError:
            raise WorkerLost(
                f"engine worker {self.index} (pid {self.pid}) did not answer within "
                f"{self.owner.executor.call_timeout_s:g} s"
            ) from None
        except RayTaskError as exc:  # the reply itself failed (an argument Ray could not ship)
            raise RemoteEngineError("INTERNAL", str(exc), type(exc).__name__) from None

    def _get_quietly(self, ref) -> dict[str, Any] | None:
        try:
            return self._get(ref)
        except GradalignError:  # the heavy call's own reference reports what went wrong
            return None


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------- the front end's engine
class RemoteEngine:
    """The engine without models: workers on Ray, the cheap queries answered from what they reported.

    Starts ``executor.workers`` actors (each loads every model of ``config``), waits until each has
    loaded, checks that they all loaded the same weights, and fetches the config, the models and the
    receipt once. ``on_event(event, **fields)`` hears of workers starting, ready and replaced.
    """

    def __init__(self, config, executor: RayExecutorConfig, on_event: Callable[..., None] | None = None):
        self.executor = executor
        self._run_config = config
        self._on_event = on_event or (lambda event, **fields: None)
        self._started_ray = _connect(executor)
        self._actor_class = None
        self._rotation = itertools.count()
        self._closed = False
        self._hashes: dict[int, Any] = {}  # worker index -> (model name, model hash) pairs it loaded
        self.workers = [RayWorker(self, i) for i in range(executor.workers)]
        self.student = _Student(SummedCounters([w.counters for w in self.workers]))
        try:
            self._start_all()
            static = self.workers[0]._get(self.workers[0].actor.static.remote())
            static = _unwrap(static)
        except BaseException:
            self.close()
            raise
        self.config, self._models, self._receipt = static["config"], list(static["models"]), static["receipt"]

    # what the service asks of an engine, without models
    def worker_handles(self) -> list[RayWorker]:
        return list(self.workers)

    def list_models(self):
        return list(self._models)

    def receipt(self) -> dict:
        return copy.deepcopy(self._receipt)

    def tree_id(self, question, rollouts=None, sampling=None, seed=None, target_teachers=None) -> str:
        return self._light("tree_id", question, rollouts, sampling, seed, target_teachers)

    def records_key(self, teacher: str, analysis=None) -> str:
        return self._light("records_key", teacher, analysis)

    def check_question(self, question, sampling=None, target_teachers=None) -> None:
        return self._light("check_question", question, sampling, target_teachers)

    def estimate(self, questions, **kwargs):
        """A calibration run on the first worker that answers (``gradalign analyze``)."""
        return self._with_any_worker(lambda w: w.estimate(questions, **kwargs))

    def close(self) -> None:
        """Stop every actor (their models go with them) and the Ray instance this engine started."""
        if self._closed:
            return
        self._closed = True
        import ray

        for worker in self.workers:
            worker.ready = False
            if worker.actor is not None:
                try:
                    ray.kill(worker.actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        if self._started_ray and ray.is_initialized():
            ray.shutdown()

    # workers
    def _light(self, method: str, *args: Any) -> Any:
        return self._with_any_worker(lambda w: w.light(method, args))

    def _with_any_worker(self, fn: Callable[[RayWorker], Any]) -> Any:
        """``fn(worker)`` on the next ready worker in turn; on to the next one when a worker is lost."""
        start = next(self._rotation)
        order = [self.workers[(start + i) % len(self.workers)] for i in range(len(self.workers))]
        lost: WorkerLost | None = None
        for worker in (w for w in order if w.ready):
            try:
                return fn(worker)
            except WorkerLost as exc:
                lost = exc
        if lost is None:
            raise WorkerLost(f"no engine worker is ready (all {len(self.workers)} are starting or being replaced)")
        raise lost

    def _actor(self):
        if self._actor_class is None:
            import ray

            options = {
                "num_cpus": self.executor.cpus_per_worker,
                "num_gpus": self.executor.gpus_per_worker,
                "max_concurrency": MAX_CONCURRENCY,
                "max_restarts": 0,  # a lost actor is replaced by the driver, which knows what it was doing
                "max_task_retries": 0,
            }
            self._actor_class = ray.remote(EngineActor).options(**options)
        return self._actor_class.remote(self._run_config)

    def _start_all(self) -> None:
        import ray

        started = time.monotonic()
        for worker in self.workers:
            worker.actor = self._actor()
        pings = {w.actor.ping.remote(): w for w in self.workers}
        ready, waiting = ray.wait(list(pings), num_returns=len(pings), timeout=self.executor.start_timeout_s)
        if waiting:
            raise WorkerLost(
                f"{len(waiting)} of {len(pings)} engine workers not ready after {self.executor.start_timeout_s:g} s: "
                f"each asks for {self.executor.cpus_per_worker:g} CPU and {self.executor.gpus_per_worker:g} GPU; "
                f"the cluster has {_available()} free"
            )
        for ref in ready:
            self._became_ready(pings[ref], pings[ref]._get(ref))
        _same_models(self.workers, self._hashes)
        self._on_event("workers_ready", workers=len(self.workers), seconds=round(time.monotonic() - started, 2))

    def _became_ready(self, worker: RayWorker, reply: Mapping[str, Any]) -> None:
        info = _unwrap(reply)
        worker.pid, worker.node, worker.ready = info["pid"], info["node"], True
        self._hashes[worker.index] = info["models"]
        self._on_event("worker_ready", worker=worker.index, pid=worker.pid, node=worker.node, load_s=info["load_s"])

    def replace(self, worker: RayWorker, should_stop: Callable[[], bool]) -> None:
        """A fresh actor for ``worker`` (the old one is killed for good); WorkerLost if it does not come up."""
        import ray

        worker.ready = False
        worker.counters.retire()
        old, started = worker.actor, time.monotonic()
        try:
            ray.kill(old, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead, which is why it is replaced
            pass
        if self._closed or should_stop():
            raise WorkerLost("the executor is shutting down")
        worker.actor = self._actor()
        ping = worker.actor.ping.remote()
        while not ray.wait([ping], timeout=1.0)[0]:
            if self._closed or should_stop() or time.monotonic() - started > self.executor.start_timeout_s:
                raise WorkerLost(f"engine worker {worker.index} could not be replaced")
        self._became_ready(worker, worker._get(ping))
        _same_models([worker], self._hashes)
        self._on_event(
            "worker_replaced", worker=worker.index, pid=worker.pid, seconds=round(time.monotonic() - started, 2)
        )


def _same_models(workers: Sequence[RayWorker], hashes: Mapping[int, Any]) -> None:
    """Every worker must have loaded the same weights: trees are content-addressed by them."""
    reference = hashes[min(hashes)]
    for worker in workers:
        if hashes[worker.index] != reference:
            raise PreconditionError(
                f"engine worker {worker.index} (node {worker.node}) loaded different models than worker "
                f"{min(hashes)}: {hashes[worker.index]} vs {reference}; every node needs the same weights"
            )


def _connect(executor: RayExecutorConfig) -> bool:
    """Join (or start) Ray unless this process already is connected; True when this call connected."""
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {}
    if not (executor.address or "").startswith("ray://"):
        # Actors' output stays in Ray's session logs and Ray's own logs go through the root logger:
        # the server's stderr carries its JSON lines only.
        options.update(log_to_driver=False, configure_logging=False)
    if executor.address is None:
        options["include_dashboard"] = False
    ray.init(address=executor.address, **{**options, **dict(executor.init_options)})
    return True


def _available() -> str:
    try:
        import ray

        free = ray.available_resources()
        return f"{free.get('CPU', 0):g} CPU and {free.get('GPU', 0):g} GPU"
    except Exception:  # noqa: BLE001 - informational only
        return "an unknown amount"
