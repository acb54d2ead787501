"""Sharding items over engine workers in order (``gradalign analyze --executor ray``): :func:`map_in_order`.

Each worker takes the next item when it is free; an item whose worker was lost runs again on another
(up to ``MAX_RETRIES`` more times); results come back in item order, with the workers' progress
forwarded to the caller's thread. Works on any handles with the engine's ``build_tree`` /
``score_tree`` signatures (the tests use fakes): it knows nothing of Ray, queues of jobs or gRPC.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .backends.base import CancelToken
from .ray_config import (
    MAX_RETRIES,
    WorkerLost,
)

__all__ = ["map_in_order"]


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
