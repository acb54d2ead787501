"""Engine workers as Ray actors: ``gradalign serve --executor ray`` and ``gradalign analyze --executor ray``.

Role. Each actor (:class:`EngineActor`) builds one :class:`~.pipeline.Engine` from the run config when
it starts and keeps its models resident, on the GPU share it declared (``num_gpus``). The driver side:

- :class:`RayWorker`, the handle on one actor, has the engine's heavy calls (``build_tree``,
  ``score_tree``, ``estimate``) with the engine's own signatures. It waits for them in short slices,
  forwards the actor's progress, passes a cancel on to the actor, and turns a dead actor into
  :class:`WorkerLost`; ``recover()`` replaces the actor.
- :class:`RemoteEngine`, the engine as a front end without models sees it: the config, the models and
  the receipt fetched once at start, cache keys and question checks answered by a light call on any
  actor, and the workers.
- :func:`map_in_order` shards items over the workers (``analyze``), retrying an item whose worker was
  lost, and yields results in item order.

Results travel as plain data (a tree as its ``to_dict()``, records as dataclasses) and errors as their
gRPC code and message, so the driver never unpickles an actor's exception.

What it does not know: job queues, storage, gRPC, logging libraries (events go to a callback). Ray is
imported only inside the functions that use it: importing this module costs nothing, and gradalign runs
without Ray installed unless this executor is selected.
"""

from __future__ import annotations

import argparse
import collections
import copy
import itertools
import math
import os
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .backends.base import CancelToken
from .errors import Cancelled, ConfigError, GradalignError, PreconditionError
from .tree import RolloutTree

__all__ = [
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

POLL_S = 0.1  # how often a waiting driver looks at its cancel token
PROGRESS_S = 0.5  # how often it asks the actor how far the job got
MAX_CONCURRENCY = 4  # actor threads: one heavy call, with light calls, progress and cancel served beside it
MAX_RETRIES = 2  # attempts after the first when a worker is lost mid-item (map_in_order; the server's JobManager)
_COUNTERS = ("generated_tokens", "forwarded_tokens", "scored_tokens", "forward_calls")
_HEAVY = ("build_tree", "score_tree", "estimate")
_LIGHT = ("tree_id", "records_key", "check_question")


class WorkerLost(GradalignError):
    """An engine worker died or stopped answering; the work it held was not finished (UNAVAILABLE)."""

    code = "UNAVAILABLE"


class RemoteEngineError(GradalignError):
    """An error raised inside an actor, rebuilt on the driver with its gRPC code and message."""

    def __init__(self, code: str, message: str, kind: str):
        self.code = code
        self.kind = kind  # the class name inside the actor
        super().__init__(message)


# ---------------------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class RayExecutorConfig:
    """Where the engine workers run and what each one asks of the cluster.

    ``address``: None starts a Ray instance on this host (or joins the one this process is already
    connected to); ``"auto"``, ``"HOST:6379"`` join a running cluster from one of its nodes;
    ``"ray://HOST:10001"`` connects through Ray Client from outside it.
    """

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    start_timeout_s: float = 900.0  # loading the models of every worker (and waiting for resources)
    call_timeout_s: float = 60.0  # a light call (cache key, question check) or fetching a result
    init_options: Mapping[str, Any] = field(default_factory=dict)  # extra ray.init arguments (tests)

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or not 1 <= self.workers <= 1024:
            raise ConfigError("ray.workers", self.workers, "must be an integer in [1, 1024]")
        for name in ("gpus_per_worker", "cpus_per_worker"):
            _check_number(f"ray.{name}", getattr(self, name), low=0.0)
        for name in ("start_timeout_s", "call_timeout_s"):
            _check_number(f"ray.{name}", getattr(self, name), low=0.0, strict=True)
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise ConfigError("ray.address", self.address, "must be HOST:PORT, 'auto' or ray://HOST:PORT")


def _check_number(name: str, value: Any, low: float, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise ConfigError(name, value, f"must be a finite number {'>' if strict else '>='} {low:g}")


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--executor`` and the ``--ray-*`` flags, shared by ``gradalign serve`` and ``gradalign analyze``."""
    parser.add_argument(
        "--executor",
        choices=["inprocess", "ray"],
        default="inprocess",
        help="where the models run: in this process (default) or in Ray actors (needs gradalign[ray])",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join (HEAD:6379 from a cluster node, ray://HEAD:10001 from outside; default: start one)",
    )
    parser.add_argument("--ray-workers", type=int, default=1, help="engine actors, each with its own models (1)")
    parser.add_argument(
        "--ray-gpus-per-worker", type=float, default=0.0, help="GPUs each actor declares (fractions share; 0)"
    )
    parser.add_argument("--ray-cpus-per-worker", type=float, default=1.0, help="CPUs each actor declares (1)")


def executor_from_args(args: argparse.Namespace) -> RayExecutorConfig | None:
    """The Ray executor the flags ask for, or None for in-process; ConfigError for ``--ray-*`` without it."""
    if args.executor != "ray":
        given = [
            flag
            for flag, value, default in (
                ("--ray-address", args.ray_address, None),
                ("--ray-workers", args.ray_workers, 1),
                ("--ray-gpus-per-worker", args.ray_gpus_per_worker, 0.0),
                ("--ray-cpus-per-worker", args.ray_cpus_per_worker, 1.0),
            )
            if value != default
        ]
        if given:
            raise ConfigError(given[0], getattr(args, given[0][2:].replace("-", "_")), "needs --executor ray")
        return None
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ConfigError("--executor", "ray", "needs the ray extra: pip install 'gradalign[ray]'")
    return RayExecutorConfig(
        address=args.ray_address,
        workers=args.ray_workers,
        gpus_per_worker=args.ray_gpus_per_worker,
        cpus_per_worker=args.ray_cpus_per_worker,
    )


# ---------------------------------------------------------------------------------------------- errors as data
def pack_error(exc: BaseException) -> dict[str, str]:
    """An exception as plain data: its class name, gRPC code and message (a bug keeps its traceback)."""
    code = getattr(exc, "code", None)
    message = str(exc)
    if not isinstance(code, str) or not isinstance(exc, GradalignError):
        code, message = "INTERNAL", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"kind": type(exc).__name__, "code": code, "message": message}


def unpack_error(info: Mapping[str, str]) -> GradalignError:
    if info["kind"] == "Cancelled":
        return Cancelled(info["message"])
    return RemoteEngineError(info["code"], info["message"], info["kind"])


def _unwrap(reply: Mapping[str, Any]) -> Any:
    if "error" in reply:
        raise unpack_error(reply["error"])
    return reply["ok"]


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


# ---------------------------------------------------------------------------------------------- sharding
def map_in_order(
    workers: Sequence[Any],
    items: Sequence[Any],
    fn: Callable[[Any, Any, CancelToken, Callable[..., None]], Any],
    *,
    on_progress: Callable[[int, tuple], None] | None = None,
    on_retry: Callable[[int, int, BaseException], None] | None = None,
    max_retries: int = MAX_RETRIES,
) -> Iterator[tuple[int, Any]]:
    """Run ``fn(worker, item, cancel, report)`` for every item on the workers; yield (index, result) in order.

    Each worker takes the next item when it is free. An item whose worker is lost (WorkerLost) goes
    back to the front of the line for another worker, at most ``max_retries`` times, while the lost
    worker is replaced (``worker.recover()``). ``report(*event)`` from a worker reaches
    ``on_progress(index, event)`` on the calling thread, which also receives the results: callbacks
    never run concurrently. The first other error stops the rest and is raised.
    """
    pending = collections.deque(range(len(items)))
    attempts: collections.Counter[int] = collections.Counter()
    lock, out, stop = threading.Lock(), queue.Queue(), CancelToken()

    def take() -> int | None:
        with lock:
            return pending.popleft() if pending else None

    def lost(index: int, exc: WorkerLost) -> None:
        with lock:
            attempts[index] += 1
            retry = attempts[index] <= max_retries
            if retry:
                pending.appendleft(index)
        out.put(
            ("retry", index, (attempts[index], exc))
            if retry
            else ("error", index, _lost_for_good(exc, attempts[index]))
        )

    def loop(worker) -> None:
        while not stop.cancelled and (index := take()) is not None:
            try:
                result = fn(worker, items[index], stop, lambda *event, i=index: out.put(("progress", i, event)))
            except WorkerLost as exc:
                lost(index, exc)
                try:
                    worker.recover(lambda: stop.cancelled)
                except BaseException:  # noqa: BLE001 - this worker is gone; the others carry on
                    return
                continue
            except BaseException as exc:  # noqa: BLE001 - raised on the calling thread
                out.put(("error", index, exc))
                return
            out.put(("done", index, result))

    threads = [
        threading.Thread(target=loop, args=(w,), name=f"gradalign-shard-{i}", daemon=True)
        for i, w in enumerate(workers)
    ]
    for thread in threads:
        thread.start()
    done: dict[int, Any] = {}
    try:
        for index in range(len(items)):
            while index not in done:
                kind, i, value = _next_message(out, threads)
                if kind == "error":
                    raise value
                if kind == "progress" and on_progress is not None:
                    on_progress(i, value)
                if kind == "retry" and on_retry is not None:
                    on_retry(i, *value)
                if kind == "done":
                    done[i] = value
            yield index, done.pop(index)
    finally:
        stop.cancel("stopped")
        for thread in threads:
            thread.join(timeout=1.0)


def _next_message(out: queue.Queue, threads: Sequence[threading.Thread]) -> tuple:
    while True:
        try:
            return out.get(timeout=0.5)
        except queue.Empty:
            if not any(t.is_alive() for t in threads) and out.empty():
                raise WorkerLost("every engine worker was lost") from None


def _lost_for_good(exc: WorkerLost, times: int) -> WorkerLost:
    return WorkerLost(f"the engine worker was lost {times} times on the same item; last: {exc}")
