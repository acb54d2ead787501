"""The synchronous SDK client: typed calls over the generated gradalign.v1 stubs.

Depends on grpcio and protobuf only; never imports torch, transformers or the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from . import _requests as rq
from ._core import (
    HEALTH_CHECK,
    HEALTH_STATUSES,
    ClientCore,
    ProgressCallback,
    channel_options,
    load_questions,
    ready_steps,
    run_steps,
    vet_steps,
)
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

__all__ = ["Client", "channel_options", "ProgressCallback", "HEALTH_STATUSES"]

_HEALTH_CHECK = HEALTH_CHECK


def _records(call) -> Iterator[AlignmentRecord]:
    try:
        for resp in call:
            yield rq.read_record(resp)
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None
    finally:
        call.cancel()  # no-op when the stream already ended; stops the server when left early


class Client(ClientCore):
    """A connection to a gradalign server.

    Thread-safe: one Client may serve many threads. Use it as a context manager, or call
    :meth:`close`.

    Parameters
    ----------
    target : str
        ``host:port`` of the server.
    timeout : float or None
        Default deadline of each call in seconds (a stream's deadline covers the whole stream);
        ``None`` waits forever. Every method takes its own ``timeout`` too.
    token : str or None
        Sent as ``authorization: Bearer <token>`` when the server was started with ``--token``.
    credentials : grpc.ChannelCredentials or None
        TLS credentials; ``None`` opens an insecure (plaintext) channel.
    options : list of (str, value) or None
        Extra channel arguments, appended to :func:`channel_options`.

    Examples
    --------
    >>> with Client("localhost:50051") as client:          # doctest: +SKIP
    ...     report = client.vet("questions.jsonl", teachers=["correct_demo", "summary"])
    ...     print(report.ranking[0].teacher)
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
        ClientCore.__init__(self, target, timeout, token, credentials, options, grpc)

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, timeout):
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    # -- calls ------------------------------------------------------------------------------------

    def health(self, service: str = "", *, timeout: float | None = 5.0) -> str:
        """The server's grpc.health.v1 status.

        Parameters
        ----------
        service : str
            Service name; ``""`` is the whole server, ``"gradalign.v1.GradAlign"`` the API.
        timeout : float or None
            Deadline in seconds.

        Returns
        -------
        str
            ``"SERVING"``, ``"NOT_SERVING"`` (loading models or shutting down) or ``"UNKNOWN"``.

        Raises
        ------
        GradalignError
            ``UNAVAILABLE`` when no server answers, ``NOT_FOUND`` for an unknown service.
        """
        try:
            return self._health(service, timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.1) -> None:
        """Block until the server reports SERVING.

        Parameters
        ----------
        timeout : float
            Seconds to wait in total.
        interval : float
            Seconds between checks.

        Raises
        ------
        GradalignError
            ``DEADLINE_EXCEEDED`` when the server is not SERVING in time (the last error or status is
            in the details).
        """
        run_steps(ready_steps(self.target, timeout, interval), lambda name, kwargs: getattr(self, name)(**kwargs))

    def list_models(self, *, timeout: float | None = None) -> list[ModelEntry]:
        """The loaded student and teachers.

        Returns
        -------
        list of ModelEntry
            The student first (role ``"student"``), then the teachers.

        Raises
        ------
        GradalignError
            On any failed call (``UNAVAILABLE`` while models load).
        """
        return rq.read_models(self._call(self._stub.ListModels, rq.list_models_request(), timeout))

    def receipt(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The engine's receipt: model and tokenizer hashes, dtype, backend, seed and default settings.

        Raises
        ------
        GradalignError
            On any failed call.
        """
        return rq.read_receipt(self._call(self._stub.ListModels, rq.list_models_request(), timeout))

    def build_tree(
        self,
        question: Question | Mapping[str, Any],
        *,
        settings: RolloutSettings | Mapping[str, Any] | None = None,
        seed: int | None = None,
        target_teachers: Iterable[str] | str | None = None,
        timeout: float | None = None,
        on_progress: Callable[[JobProgress], None] | None = None,
    ) -> BuildTreeResult:
        """Build the rollout tree of one question, or fetch it when already built.

        With ``on_progress``, the call streams the build's progress (WatchBuildTree) and calls
        ``on_progress(JobProgress)`` for each event (stage, done, total, tokens_generated, seconds).

        Parameters
        ----------
        question : Question or mapping
            The question, or a JSONL-style dict (``id``, ``question``, ``answer``, ...).
        settings : RolloutSettings or mapping, optional
            Rollout and sampling settings; unset ones take the server's defaults.
        seed : int, optional
            Seed of every random choice; default the server's seed.
        target_teachers : list of str, optional
            Teachers whose distributions steer node and candidate choice; default all.
        timeout : float, optional
            Deadline in seconds; default the client's. When it passes the server stops generating.

        Returns
        -------
        BuildTreeResult
            ``tree_id`` (content address) and the summary; ``summary.cache_hit`` is true when the
            tree came from storage.

        Raises
        ------
        GradalignError
            ``INVALID_ARGUMENT`` (names the field), ``NOT_FOUND`` (unknown teacher),
            ``RESOURCE_EXHAUSTED`` (queue full or over budget), ``DEADLINE_EXCEEDED``, ``CANCELLED``.
        """
        req = rq.build_tree_request(question, settings, seed, target_teachers)
        if on_progress is None:
            return rq.read_build_tree(self._call(self._stub.BuildTree, req, timeout))
        try:
            deadline = self.timeout if timeout is None else timeout
            for event in self._stub.WatchBuildTree(req, timeout=deadline, metadata=self._metadata):
                if event.HasField("result"):
                    return rq.read_build_tree(event.result)
                on_progress(rq.read_progress(event.progress))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        raise GradalignError("UNKNOWN", "WatchBuildTree ended without a result")

    def estimate_cost(
        self,
        questions: Iterable[Question | Mapping[str, Any]] | str | Path,
        *,
        settings: RolloutSettings | Mapping[str, Any] | None = None,
        target_teachers: Iterable[str] | str | None = None,
        teachers: Iterable[str] | str | None = None,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> CostEstimate:
        """What building and scoring a tree per question would cost on this server.

        The server samples a short calibration batch on its student and estimates generated tokens,
        teacher-scored tokens and seconds (``CostEstimate``; ``calibration`` holds the measured rates).
        ``questions`` is a dataset path or an iterable, as for :meth:`vet`.
        """
        req = rq.estimate_cost_request(load_questions(questions, limit), settings, target_teachers, teachers)
        return rq.read_estimate(self._call(self._stub.EstimateCost, req, timeout))

    def score_teacher(
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
        """Score teachers on built trees and aggregate the alignment.

        Parameters
        ----------
        tree_ids : list of str
            Ids returned by :meth:`build_tree`.
        teachers : list of str, optional
            Teachers to score; default every loaded teacher.
        methods : list of str, optional
            Distillation methods (forward_kl, reverse_kl, jsd, single_sample, minillm); default the
            server's.
        analysis : AnalysisSettings or mapping, optional
            Overrides of the server's analysis settings.
        seed : int, optional
            Bootstrap seed; default the server's.
        confidence : float, optional
            Level of every interval; default the server's.
        timeout : float, optional
            Deadline in seconds; default the client's.

        Returns
        -------
        Report
            Groups, comparisons, correlations, ranking and per-question figures, with ``receipt``.

        Raises
        ------
        GradalignError
            ``NOT_FOUND`` (unknown tree or teacher), ``INVALID_ARGUMENT``, ``FAILED_PRECONDITION``,
            ``RESOURCE_EXHAUSTED``, ``DEADLINE_EXCEEDED``, ``CANCELLED``.
        """
        req = rq.score_teacher_request(tree_ids, teachers, methods, analysis, seed, confidence)
        return rq.read_report(self._call(self._stub.ScoreTeacher, req, timeout))

    def stream_alignments(
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
    ) -> Iterator[AlignmentRecord]:
        """Iterate over per-node alignment records (scoring the trees first when needed).

        Parameters
        ----------
        tree_ids, teachers, methods, analysis
            As in :meth:`score_teacher`.
        split : {"correct", "incorrect", "all", None}
            Only records of correct or incorrect rollouts; default both.
        include_skipped : bool
            Also yield skipped nodes (``cosine is None``, ``skip_reason`` set).
        min_depth, max_depth : int, optional
            Only nodes with ``min_depth <= depth <= max_depth``.
        include_prefix_ids : bool
            Fill ``prefix_token_ids``.
        timeout : float, optional
            Deadline of the whole stream in seconds; default the client's.

        Returns
        -------
        iterator of AlignmentRecord
            Lazily; leaving the loop early cancels the stream.

        Raises
        ------
        GradalignError
            As :meth:`score_teacher`, raised while iterating.
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
        return _records(call)

    def vet(
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
        """Build a tree per question of a dataset, then score the teachers on all of them.

        Parameters
        ----------
        dataset : path or iterable
            A JSONL file (one question per line) or Question objects / dicts.
        teachers : list of str, optional
            Teachers to vet (also the trees' target teachers); default every loaded teacher.
        methods : list of str, optional
            Distillation methods; default the server's.
        limit : int, optional
            Use only the first ``limit`` questions.
        progress : callable, optional
            ``progress(done, total, result)``: ``(0, total, None)`` first, then after each tree.
        settings, analysis, seed
            As in :meth:`build_tree` and :meth:`score_teacher`.
        timeout : float, optional
            Deadline of each call in seconds; default the client's.
        on_stage : callable, optional
            ``on_stage(question_id, JobProgress)`` for each progress event of each build.

        Returns
        -------
        Report
            The aggregate report over every tree.

        Raises
        ------
        GradalignError
            ``INVALID_ARGUMENT`` for an unreadable dataset (names file and line), and any error of
            :meth:`build_tree` or :meth:`score_teacher`.
        """
        steps = vet_steps(dataset, teachers, methods, limit, progress, settings, analysis, seed, timeout, on_stage)
        return run_steps(steps, lambda name, kwargs: getattr(self, name)(**kwargs))
