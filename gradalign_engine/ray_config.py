"""The Ray executor's settings, flags and errors: what ``--executor ray`` asks for, and errors as plain data.

Shared by the driver side (:mod:`.ray_executor`) and the actors (:mod:`.ray_actor`). Knows nothing of
Ray itself (nothing here imports it), of job queues or of gRPC.
"""

from __future__ import annotations

import argparse
import math
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import Cancelled, ConfigError, GradalignError

__all__ = [
    "MAX_RETRIES",
    "RayExecutorConfig",
    "RemoteEngineError",
    "WorkerLost",
    "add_executor_arguments",
    "executor_from_args",
    "pack_error",
    "unpack_error",
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
