"""The gRPC service's failure modes over a real channel: bad arguments, unknown trees and teachers, budgets,
full queues, deadlines, cancellation, tokenizer mismatch, authentication, restarts and SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

pytest.importorskip("torch")
pytest.importorskip("grpc_health")

from service_setup import BIG, QUESTION, QUESTION_2, TEACHERS, _idle, _metric, tiny_config  # noqa: E402,F401

from gradalign_client import AsyncClient, Client, GradalignError  # noqa: E402
from gradalign_engine.config import (  # noqa: E402
    ModelSpec,
)
from gradalign_server import create_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def engine(service_engine):
    """The session's engine (tests/conftest.py), shared with the servers these tests start."""
    return service_engine


def test_invalid_argument_names_the_field(served):
    server, client = served
    cases = [
        (dict(question=QUESTION, settings={"num_rollouts": 0}), "settings.num_rollouts"),
        (dict(question=QUESTION, settings={"temperature": -1.0}), "settings.temperature"),
        (dict(question=QUESTION, settings={"priority": "random"}), "settings.priority"),
        (dict(question={**QUESTION, "choices": ["only one"]}), "question.choices"),
        (dict(question={**QUESTION, "question": "  "}), "question.text"),
    ]
    for kwargs, field in cases:
        with pytest.raises(GradalignError) as err:
            client.build_tree(kwargs.pop("question"), **kwargs)
        assert err.value.code == "INVALID_ARGUMENT" and field in err.value.details, (field, err.value)
    tree_id = client.build_tree(QUESTION).tree_id
    with pytest.raises(GradalignError) as err:
        client.score_teacher([tree_id], methods=["cross_entropy"])
    assert err.value.code == "INVALID_ARGUMENT" and "methods" in err.value.details
    with pytest.raises(GradalignError) as err:
        client.score_teacher([tree_id], analysis={"jsd_beta": 2.0})
    assert err.value.code == "INVALID_ARGUMENT" and "analysis.jsd_beta" in err.value.details
    with pytest.raises(GradalignError) as err:
        list(client.stream_alignments([tree_id], min_depth=3, max_depth=1))
    assert err.value.code == "INVALID_ARGUMENT" and "max_depth" in err.value.details
    # A raw request without a question (the SDK would refuse to build it).
    from gradalign_client._proto.gradalign.v1 import gradalign_pb2 as pb
    from gradalign_client._proto.gradalign.v1 import gradalign_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.RpcError) as raw:
            pb_grpc.GradAlignStub(channel).BuildTree(pb.BuildTreeRequest(), timeout=10)
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "question" in raw.value.details()
    assert server.store.get_tree(tree_id) is not None  # bad requests lose nothing


def test_not_found_tree_and_teacher(served):
    server, client = served
    tree_id = client.build_tree(QUESTION).tree_id
    for call in (
        lambda: client.score_teacher(["0" * 32]),
        lambda: list(client.stream_alignments(["0" * 32])),
        lambda: client.score_teacher([tree_id], teachers=["ghost"]),
        lambda: client.build_tree(QUESTION, target_teachers=["ghost"]),
    ):
        with pytest.raises(GradalignError) as err:
            call()
        assert err.value.code == "NOT_FOUND", err.value
        assert "0" * 32 in err.value.details or "ghost" in err.value.details


def test_resource_exhausted_budget(served):
    server, client = served
    with pytest.raises(GradalignError) as err:
        client.build_tree(QUESTION, settings={"max_continuations": 10_000_000})
    assert err.value.code == "RESOURCE_EXHAUSTED" and "limit" in err.value.details
    # Longer than the model's context (512 positions): refused before any work, naming both lengths.
    with pytest.raises(GradalignError) as err:
        client.build_tree(QUESTION, settings={"max_new_tokens": 2000})
    assert err.value.code == "INVALID_ARGUMENT" and "more than the student's context of 512 tokens" in err.value.details


class _BlockingEngine:
    """The real engine, but build_tree waits for a signal first (to fill the queue deterministically)."""

    def __init__(self, engine):
        self._engine = engine
        self.release = threading.Event()

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def build_tree(self, *args, cancel=None, **kwargs):
        while not self.release.wait(0.02):
            if cancel is not None:
                cancel.raise_if_cancelled()
        return self._engine.build_tree(*args, cancel=cancel, **kwargs)


def test_resource_exhausted_queue_full(engine):
    blocking = _BlockingEngine(engine)
    server, port = create_server(blocking, max_queue=1)
    pool = []
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as client:

            def submit(seed):
                t = threading.Thread(target=lambda: pool.append(client.build_tree(QUESTION, seed=seed)))
                t.start()
                return t

            first = submit(100)
            _wait(lambda: server.jobs.running == 1)
            second = submit(101)
            _wait(lambda: server.jobs.queued == 1)
            with pytest.raises(GradalignError) as err:
                client.build_tree(QUESTION, seed=102)
            assert err.value.code == "RESOURCE_EXHAUSTED" and "queue full" in err.value.details
            blocking.release.set()
            first.join(60)
            second.join(60)
            assert len(pool) == 2
    finally:
        blocking.release.set()
        server.stop(grace=1)


def _wait(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_deadline_exceeded_stops_the_job(served, engine):
    server, client = served
    _idle(server)
    with pytest.raises(GradalignError) as err:
        client.build_tree(QUESTION, settings=BIG, seed=7, timeout=1.0)
    assert err.value.code == "DEADLINE_EXCEEDED"
    _idle(server, timeout=10)
    assert (
        server.metrics.value(
            "gradalign_job_duration_seconds_count", {"kind": "build_tree", "outcome": "DEADLINE_EXCEEDED"}
        )
        == 1
    )


def test_cancel_stops_generation(served, engine):
    # The public way to cancel a call: cancel the asyncio task of an AsyncClient request.
    server, client = served
    _idle(server)
    counters = engine.student.counters

    async def build_then_cancel() -> float:
        async with AsyncClient(client.target, timeout=120) as aclient:
            task = asyncio.ensure_future(aclient.build_tree(QUESTION, settings=BIG, seed=8))
            await _await(lambda: server.jobs.running == 1)
            await _await(lambda: counters.snapshot()["generated_tokens"] > 0)
            await asyncio.sleep(0.3)
            started = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return started

    started = asyncio.run(build_then_cancel())
    _idle(server, timeout=10)
    stopped_after = time.monotonic() - started
    generated = counters.snapshot()["generated_tokens"]
    time.sleep(0.5)
    assert counters.snapshot()["generated_tokens"] == generated, "generation went on after the cancel"
    assert stopped_after < 5
    assert (
        server.metrics.value("gradalign_job_duration_seconds_count", {"kind": "build_tree", "outcome": "CANCELLED"})
        == 1
    )


async def _await(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def test_failed_precondition_teacher_with_other_tokenizer(tiny_model_dir, tiny_model_dir_other_tokenizer):
    config = tiny_config(
        tiny_model_dir,
        name="other",
        kind="external",
        model=ModelSpec(model=str(tiny_model_dir_other_tokenizer), device="cpu"),
    )
    server, port = create_server(config)
    try:
        with pytest.raises(Exception) as load_error:
            server.wait_until_ready(timeout=120)
        assert type(load_error.value).__name__ == "TokenizerMismatchError"
        with Client(f"127.0.0.1:{port}", timeout=10) as client:
            assert client.health() == "NOT_SERVING"
            with pytest.raises(GradalignError) as err:
                client.list_models()
        assert (
            err.value.code == "FAILED_PRECONDITION"
            and "other" in err.value.details
            and "tokenizer" in err.value.details
        )
    finally:
        server.stop(grace=0)


def test_unauthenticated_without_the_token(engine):
    server, port = create_server(engine, token="s3cret")
    try:
        with Client(f"127.0.0.1:{port}", timeout=10) as anonymous:
            assert anonymous.health() == "SERVING"  # orchestrators check health without the token
            with pytest.raises(GradalignError) as err:
                anonymous.list_models()
            assert err.value.code == "UNAUTHENTICATED"
        with Client(f"127.0.0.1:{port}", timeout=10, token="wrong") as wrong:
            with pytest.raises(GradalignError) as err:
                list(wrong.stream_alignments(["x"]))
            assert err.value.code == "UNAUTHENTICATED"
        with Client(f"127.0.0.1:{port}", timeout=10, token="s3cret") as good:
            assert len(good.list_models()) == 3
    finally:
        server.stop(grace=0)


# ---------------------------------------------------------------------------------------------- lifecycle


def test_store_survives_restart(engine, tmp_path):
    db = tmp_path / "restart.sqlite"
    server, port = create_server(engine, db_path=db)
    with Client(f"127.0.0.1:{port}", timeout=60) as client:
        tree = client.build_tree(QUESTION_2, seed=11)
        report = client.score_teacher([tree.tree_id])
        records = list(client.stream_alignments([tree.tree_id], include_skipped=True))
    server.stop(grace=1)  # a server given an engine leaves it open (close_engine defaults to False)
    from grpc_health.v1 import health_pb2

    assert (
        server.health.Check(health_pb2.HealthCheckRequest(service=""), None).status
        == health_pb2.HealthCheckResponse.NOT_SERVING
    )

    server, port = create_server(engine, db_path=db, metrics_port=0)
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            again = client.build_tree(QUESTION_2, seed=11)
            assert again.tree_id == tree.tree_id and again.summary.cache_hit
            cached = client.score_teacher([tree.tree_id])
            assert cached.cache_hit and json.dumps(cached.to_dict()["ranking"]) == json.dumps(
                report.to_dict()["ranking"]
            )
            assert len(list(client.stream_alignments([tree.tree_id], include_skipped=True))) == len(records)
        assert (
            _metric(server, "gradalign_trees_built_total") == 0
            and _metric(server, "gradalign_records_scored_total") == 0
        )
    finally:
        server.stop(grace=1)


def test_serve_command_sigterm_drains_and_exits(tiny_model_dir, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        f'[student]\nmodel = "{tiny_model_dir}"\ndevice = "cpu"\n'
        '[[teachers]]\nname = "demo"\ncontext = "correct_demo"\n'
        "[sampling]\nmax_new_tokens = 8\n[rollouts]\nnum_rollouts = 2\nnodes_per_path = 1\ncandidate_top_k = "
        "1\ncontinuations = 2\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in (".", "server", "client"))}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gradalign_server",
            "--config",
            str(config),
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--db",
            str(tmp_path / "s.sqlite"),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        port = None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if '"grpc_listening"' in line:
                port = json.loads(line)["port"]
                break
        assert port, "".join(lines)
        with Client(f"127.0.0.1:{port}", timeout=30) as client:
            client.wait_ready(timeout=120)
            assert client.build_tree(QUESTION).summary.rollouts == 2
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1]
        everything = [line for line in lines + rest.splitlines(True) if line.strip()]
        not_json = [line for line in everything if not line.startswith("{")]
        assert not not_json, f"stderr is not JSON only: {not_json[:3]}"
        events = [json.loads(line)["event"] for line in everything]
        assert proc.returncode == 0, rest
        assert "rpc" in events and events[-1] == "shutdown_done" and "shutdown_begin" in events
    finally:
        if proc.poll() is None:
            proc.kill()
