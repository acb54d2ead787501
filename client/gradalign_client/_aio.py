"""The asyncio SDK client (grpc.aio): the same calls as :class:`~gradalign_client.Client`, awaitable."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from . import _requests as rq
from ._core import ClientCore, ProgressCallback, load_questions, ready_steps, run_steps_async, vet_steps
from ._errors import GradalignError, from_rpc_error
from ._types import (
    AlignmentRecord,
    AnalysisSettings,
    BuildTreeResult,
    CostEstimate,
    JobProgress,
    ModelEntry,
    Question,
    Report,
    RolloutSettings,
)

__all__ = ["AsyncClient"]


class AsyncClient(ClientCore):
    """An asyncio connection to a gradalign server.

    Create and use it inside one event loop; ``async with AsyncClient(...) as client``. Parameters and
    errors are those of :class:`~gradalign_client.Client`; every call is a coroutine and
    :meth:`stream_alignments` an async iterator. Cancelling the awaiting task cancels the RPC, and a
    cancelled BuildTree stops generating on the server.

    Parameters
    ----------
    target : str
        ``host:port`` of the server.
    timeout : float or None
        Default deadline of each call in seconds.
    token : str or None
        Bearer token for a server started with ``--token``.
    credentials : grpc.ChannelCredentials or None
        TLS credentials; ``None`` opens an insecure channel.
    options : list of (str, value) or None
        Extra channel arguments.
    """

    def __init__(
        self,
        target: str,
        timeout: float | None = 600.0,
        token: str | None = None,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: list[tuple[str, Any]] | None = None,
    ):
        ClientCore.__init__(self, target, timeout, token, credentials, options, grpc.aio)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, method, request, timeout):
        try:
            return await method(request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def health(self, service: str = "", *, timeout: float | None = 5.0) -> str:
        """The server's grpc.health.v1 status (see :meth:`Client.health`).

        Raises
        ------
        GradalignError
            ``UNAVAILABLE`` when no server answers.
        """
        try:
            return await self._health(service, timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def wait_ready(self, timeout: float = 60.0, interval: float = 0.1) -> None:
        """Wait until the server reports SERVING.

        Raises
        ------
        GradalignError
            ``DEADLINE_EXCEEDED`` when it does not in time.
        """
        await run_steps_async(ready_steps(self.target, timeout, interval), self._step)

    def _step(self, name: str, kwargs: dict):
        return getattr(self, name)(**kwargs)

    async def list_models(self, *, timeout: float | None = None) -> list[ModelEntry]:
        """The loaded student and teachers (see :meth:`Client.list_models`).

        Raises
        ------
        GradalignError
            On any failed call.
        """
        return rq.read_models(await self._call(self._stub.ListModels, rq.list_models_request(), timeout))

    async def build_tree(
        self,
        question: Question | Mapping[str, Any],
        *,
        settings: RolloutSettings | Mapping[str, Any] | None = None,
        seed: int | None = None,
        target_teachers: Iterable[str] | str | None = None,
        timeout: float | None = None,
        on_progress: Callable[[JobProgress], None] | None = None,
    ) -> BuildTreeResult:
        """Build (or fetch) the rollout tree of one question (see :meth:`Client.build_tree`).

        Returns
        -------
        BuildTreeResult

        Raises
        ------
        GradalignError
            As :meth:`Client.build_tree`.
        """
        req = rq.build_tree_request(question, settings, seed, target_teachers)
        if on_progress is None:
            return rq.read_build_tree(await self._call(self._stub.BuildTree, req, timeout))
        try:
            deadline = self.timeout if timeout is None else timeout
            async for event in self._stub.WatchBuildTree(req, timeout=deadline, metadata=self._metadata):
                if event.HasField("result"):
                    return rq.read_build_tree(event.result)
                on_progress(rq.read_progress(event.progress))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        raise GradalignError("UNKNOWN", "WatchBuildTree ended without a result")

    async def estimate_cost(
        self,
        questions: Iterable[Question | Mapping[str, Any]] | str | Path,
        *,
        settings: RolloutSettings | Mapping[str, Any] | None = None,
        target_teachers: Iterable[str] | str | None = None,
        teachers: Iterable[str] | str | None = None,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> CostEstimate:
        """What building and scoring a tree per question would cost (see :meth:`Client.estimate_cost`)."""
        req = rq.estimate_cost_request(load_questions(questions, limit), settings, target_teachers, teachers)
        return rq.read_estimate(await self._call(self._stub.EstimateCost, req, timeout))

    async def score_teacher(
        self,
        tree_ids: Sequence[str] | str,
        teachers: Iterable[str] | str | None = None,
        methods: Iterable[str] | str | None = None,
        *,
        analysis: AnalysisSettings | Mapping[str, Any] | None = None,
        seed: int | None = None,
        confidence: float | None = None,
        timeout: float | None = None,
    ) -> Report:
        """Score teachers on built trees (see :meth:`Client.score_teacher`).

        Returns
        -------
        Report

        Raises
        ------
        GradalignError
            As :meth:`Client.score_teacher`.
        """
        req = rq.score_teacher_request(tree_ids, teachers, methods, analysis, seed, confidence)
        return rq.read_report(await self._call(self._stub.ScoreTeacher, req, timeout))

    async def stream_alignments(
        self,
        tree_ids: Sequence[str] | str,
        teachers: Iterable[str] | str | None = None,
        methods: Iterable[str] | str | None = None,
        *,
        split: str | None = None,
        include_skipped: bool = False,
        min_depth: int | None = None,
        max_depth: int | None = None,
        include_prefix_ids: bool = False,
        analysis: AnalysisSettings | Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[AlignmentRecord]:
        """Async-iterate over per-node alignment records (see :meth:`Client.stream_alignments`).

        Returns
        -------
        async iterator of AlignmentRecord

        Raises
        ------
        GradalignError
            As :meth:`Client.score_teacher`, raised while iterating.
        """
        req = rq.stream_alignments_request(
            tree_ids,
            teachers,
            methods,
            split=split,
            include_skipped=include_skipped,
            min_depth=min_depth,
            max_depth=max_depth,
            include_prefix_ids=include_prefix_ids,
            analysis=analysis,
        )
        call = self._stub.StreamAlignments(
            req, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata
        )
        try:
            async for resp in call:
                yield rq.read_record(resp)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    async def vet(
        self,
        dataset: str | Path | Iterable[Question | Mapping[str, Any]],
        teachers: Iterable[str] | str | None = None,
        methods: Iterable[str] | str | None = None,
        limit: int | None = None,
        progress: ProgressCallback | None = None,
        *,
        settings: RolloutSettings | Mapping[str, Any] | None = None,
        analysis: AnalysisSettings | Mapping[str, Any] | None = None,
        seed: int | None = None,
        timeout: float | None = None,
        on_stage: Callable[[str, JobProgress], None] | None = None,
    ) -> Report:
        """Build a tree per question, then score the teachers (see :meth:`Client.vet`).

        Returns
        -------
        Report

        Raises
        ------
        GradalignError
            As :meth:`Client.vet`.
        """
        steps = vet_steps(dataset, teachers, methods, limit, progress, settings, analysis, seed, timeout, on_stage)
        return await run_steps_async(steps, self._step)
