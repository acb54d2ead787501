"""Prometheus metrics of the service (prefix ``gradalign_``), on a registry of their own.

A registry per server (not the process-wide default) lets tests run several servers in one
process. ``serve`` exposes it on ``/metrics`` with ``prometheus_client.start_http_server``.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

__all__ = ["Metrics", "RPC_BUCKETS", "JOB_BUCKETS"]

# RPCs range from a ~1 ms ListModels or cache hit to a BuildTree of many minutes on a CPU.
RPC_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class Metrics:
    """Counters, gauges and histograms of one server."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.tokens_generated = Counter(
            "gradalign_tokens_generated", "Student tokens sampled (rollouts and continuations).", registry=r
        )
        self.teacher_tokens_scored = Counter(
            "gradalign_teacher_tokens_scored",
            "Completion tokens teacher-forced through teachers (phase=build: node priorities; phase=score: records).",
            ["phase"],
            registry=r,
        )
        self.rollouts = Counter("gradalign_rollouts", "Base rollouts sampled.", registry=r)
        self.continuations = Counter("gradalign_continuations", "Forced continuations sampled.", registry=r)
        self.trees_built = Counter("gradalign_trees_built", "Trees built (cache hits excluded).", registry=r)
        self.nodes_analysed = Counter(
            "gradalign_nodes_analysed", "Analysis nodes with continuations, over built trees.", registry=r
        )
        self.records_scored = Counter(
            "gradalign_records_scored", "Alignment records computed (not served from storage).", registry=r
        )
        self.cache_hits = Counter("gradalign_cache_hits", "Requests answered from storage.", ["kind"], registry=r)
        self.rpc_seconds = Histogram(
            "gradalign_rpc_duration_seconds",
            "RPC latency by method and status code.",
            ["method", "code"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.job_seconds = Histogram(
            "gradalign_job_duration_seconds",
            "Engine job run time (queue wait excluded) by kind and outcome.",
            ["kind", "outcome"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.jobs_running = Gauge("gradalign_jobs_running", "Engine jobs running now.", registry=r)
        self.jobs_queued = Gauge("gradalign_jobs_queued", "Engine jobs waiting in the queue.", registry=r)
        self.model_info = Info(
            "gradalign_model", "Loaded models: role, kind, backend, dtype, device and hashes.", ["name"], registry=r
        )
        self._http = None

    def count_tree(self, summary: dict, teacher_tokens: int) -> None:
        """A tree was built: its rollouts, continuations, tokens and nodes."""
        self.trees_built.inc()
        self.rollouts.inc(summary["rollouts"])
        self.continuations.inc(summary["continuations"])
        self.tokens_generated.inc(summary["tokens_generated"])
        self.nodes_analysed.inc(summary["nodes_analysed"])
        self.teacher_tokens_scored.labels(phase="build").inc(teacher_tokens)

    def count_records(self, records: int, teacher_tokens: int) -> None:
        """Records were scored (not served from storage)."""
        self.records_scored.inc(records)
        self.teacher_tokens_scored.labels(phase="score").inc(teacher_tokens)

    def set_jobs(self, running: int, queued: int) -> None:
        self.jobs_running.set(running)
        self.jobs_queued.set(queued)

    def set_models(self, models: Iterable) -> None:
        for m in models:
            self.model_info.labels(name=m.name).info(
                {
                    "role": m.role,
                    "kind": m.kind,
                    "context": m.context,
                    "backend": m.backend,
                    "dtype": m.dtype,
                    "device": m.device,
                    "tokenizer_hash": m.tokenizer_hash,
                    "model_hash": m.model_hash,
                }
            )

    def serve_http(self, port: int, addr: str = "127.0.0.1") -> int:
        """Expose ``/metrics`` over HTTP on ``addr:port`` (0: a free port); return the bound port.

        OSError naming the address when it cannot be bound (in use, or not an address of this host).
        """
        try:
            server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            raise OSError(f"cannot serve /metrics on {addr}:{port}: {exc.strerror or exc}") from None
        self._http = server
        return server.server_port

    @property
    def http_address(self) -> tuple[str, int] | None:
        """(host, port) that ``/metrics`` listens on, or None when not served."""
        return None if self._http is None else self._http.server_address[:2]

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of a sample (tests and logs); 0 when absent."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0
