"""The server's Ray mode: the engine factory that starts the actors, with their events in the server's log.

``gradalign serve --executor ray`` (or ``create_server(..., executor=RayExecutorConfig(...))``) loads no
model in this process: the loader thread builds a ``gradalign_engine.ray_executor.RemoteEngine``, which
starts one actor per worker and waits until each has loaded its models; the job manager then binds one
worker thread to each actor's handle. What runs where, retries and replacement of lost actors are
described in ``gradalign_engine/ray_executor.py`` and ``_jobs.py``.

Knows nothing of gRPC; imports Ray only when the factory runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

__all__ = ["remote_engine_factory"]

log = structlog.get_logger("gradalign.server")


def remote_engine_factory(config_or_path: Any, executor: Any) -> Callable[[], Any]:
    """A zero-argument callable that starts the actors of ``executor`` for a RunConfig or a TOML path."""

    def start():
        from gradalign_engine.config import load_run_config
        from gradalign_engine.ray_executor import RemoteEngine

        config = load_run_config(config_or_path) if isinstance(config_or_path, (str, Path)) else config_or_path
        log.info(
            "ray_workers_starting",
            address=executor.address or "local",
            workers=executor.workers,
            gpus_per_worker=executor.gpus_per_worker,
            cpus_per_worker=executor.cpus_per_worker,
        )
        return RemoteEngine(config, executor, on_event=_log_event)

    return start


def _log_event(event: str, **fields: Any) -> None:
    log.info(event, **fields)
