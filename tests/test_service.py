"""The gRPC service over a real channel on 127.0.0.1:0, with a tiny random-weight model.

One engine is loaded per session and shared by the servers these tests start (sequentially: a
shared engine must not serve two workers at once). Settings are tiny: 3 rollouts of 8 tokens.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

pytest.importorskip("torch")
pytest.importorskip("grpc_health")

from gradalign_client import AsyncClient, Client, GradalignError  # noqa: E402
from gradalign_client._requests import build_tree_request  # noqa: E402
from gradalign_client.cli import main as cli_main  # noqa: E402
from gradalign_engine.config import (  # noqa: E402
    AnalysisConfig,
    ModelSpec,
    RolloutConfig,
    RunConfig,
    SamplingConfig,
    TeacherSpec,
)
from gradalign_server import ServiceLimits, create_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The tiny model writes random words; a completion succeeds when it holds the answer's token anywhere, so
# trees get mixed outcomes (a numeric verifier reads random words as no answer at all).
QUESTION = {"id": "q1", "question": "what is 1 + 2 ?", "answer": "3", "solution": "1 + 2 = 3 . the answer is 3",
            "verifier": "regex", "verifier_options": {"pattern": r"\b3\b"}}
QUESTION_2 = {"id": "q2", "question": "how many is 2 + 2 ?", "answer": "4", "solution": "2 + 2 = 4 . the answer is 4",
              "verifier": "regex", "verifier_options": {"pattern": r"\b4\b"}}
TEACHERS = ("demo", "cw")
# Large enough to run for many seconds on the tiny model, for the cancellation tests.
BIG = {"num_rollouts": 16, "max_new_tokens": 200, "nodes_per_path": 8, "continuations": 8}


def tiny_config(model_dir: Path, **teacher_extra) -> RunConfig:
    teachers = [TeacherSpec(name="demo", context="correct_demo"), TeacherSpec(name="cw", context="correct_and_wrong")]
    if teacher_extra:
        teachers.append(TeacherSpec(**teacher_extra))
    return RunConfig(
        student=ModelSpec(model=str(model_dir), device="cpu"),
        teachers=tuple(teachers),
        sampling=SamplingConfig(max_new_tokens=8),
        rollouts=RolloutConfig(num_rollouts=3, nodes_per_window=1, nodes_per_path=2, candidate_top_k=1, continuations=2),
        analysis=AnalysisConfig(methods=("forward_kl", "reverse_kl"), bootstrap_samples=50),
    )


@pytest.fixture(scope="session")
def engine(tiny_model_dir):
    from gradalign_engine.pipeline import Engine

    engine = Engine(tiny_config(tiny_model_dir))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def served(engine, tmp_path_factory):
    """A server on a file store with metrics on a free port; yields (server, client)."""
    db = tmp_path_factory.mktemp("db") / "store.sqlite"
    server, port = create_server(engine, "127.0.0.1:0", db, metrics_port=0, limits=ServiceLimits(max_request_tokens=5_000_000))
    client = Client(f"127.0.0.1:{port}", timeout=60)
    yield server, client
    client.close()
    server.stop(grace=1)


def _idle(server, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while server.jobs.running or server.jobs.queued:
        assert time.monotonic() < deadline, "the engine worker did not go idle"
        time.sleep(0.02)


def _metric(server, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---------------------------------------------------------------------------------------------- basics


def test_health_reflection_and_models(served, engine):
    server, client = served
    assert client.health() == "SERVING"
    assert client.health("gradalign.v1.GradAlign") == "SERVING"
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"gradalign.v1.GradAlign", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services

    models = client.list_models()
    assert [m.role for m in models] == ["student", "teacher", "teacher"]
    assert [m.name for m in models[1:]] == list(TEACHERS)
    assert models[1].kind == "self" and models[1].context == "correct_demo"
    assert models[0].model_hash == engine.student.info.model_hash and len(models[0].tokenizer_hash) == 64
    receipt = client.receipt()
    assert receipt["student"]["model_hash"] == engine.student.info.model_hash


def test_health_not_serving_until_loaded(engine):
    release = threading.Event()

    def slow_factory():
        assert release.wait(30)
        return engine

    server, port = create_server(slow_factory, close_engine=False)
    try:
        with Client(f"127.0.0.1:{port}", timeout=10) as client:
            assert client.health() == "NOT_SERVING"
            with pytest.raises(GradalignError) as err:
                client.list_models()
            assert err.value.code == "UNAVAILABLE" and "loading" in err.value.details
            release.set()
            client.wait_ready(timeout=10)
            assert client.health() == "SERVING"
            assert len(client.list_models()) == 3
    finally:
        release.set()
        server.stop(grace=0)


def test_build_tree_then_cache_hit(served):
    server, client = served
    first = client.build_tree(QUESTION)
    assert re.fullmatch(r"[0-9a-f]{32}", first.tree_id) and first.question_id == "q1"
    s = first.summary
    assert s.rollouts == 3 and not s.cache_hit and s.tokens_generated > 0 and s.nodes_analysed + s.nodes_skipped > 0
    assert s.accuracy == pytest.approx(s.correct / s.rollouts)
    hits = _metric(server, "gradalign_cache_hits_total")
    again = client.build_tree(QUESTION)
    assert again.tree_id == first.tree_id and again.summary.cache_hit
    assert again.summary.tokens_generated == s.tokens_generated
    assert _metric(server, "gradalign_cache_hits_total") == hits + 1
    other = client.build_tree(QUESTION, seed=1)
    assert other.tree_id != first.tree_id and not other.summary.cache_hit


def test_metrics_move_after_build_tree(served):
    server, client = served
    before = {n: _metric(server, n) for n in ("gradalign_trees_built_total", "gradalign_tokens_generated_total", "gradalign_rollouts_total")}
    count = _metric(server, 'gradalign_rpc_duration_seconds_count{code="OK",method="BuildTree"}')
    result = client.build_tree(QUESTION, seed=2)
    assert _metric(server, "gradalign_trees_built_total") == before["gradalign_trees_built_total"] + 1
    assert _metric(server, "gradalign_tokens_generated_total") == before["gradalign_tokens_generated_total"] + result.summary.tokens_generated
    assert _metric(server, "gradalign_rollouts_total") == before["gradalign_rollouts_total"] + 3
    assert _metric(server, 'gradalign_rpc_duration_seconds_count{code="OK",method="BuildTree"}') == count + 1
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    for name in ("gradalign_jobs_running", "gradalign_jobs_queued", "gradalign_model_info", "gradalign_teacher_tokens_scored_total",
                 "gradalign_continuations_total", "gradalign_nodes_analysed_total", 'gradalign_rpc_duration_seconds_bucket{code="OK",le="0.005",method="BuildTree"}'):
        assert name in text, name


def test_score_teacher_report_and_cache(served):
    server, client = served
    trees = [client.build_tree(q).tree_id for q in (QUESTION, QUESTION_2)]
    report = client.score_teacher(trees, methods=["fkl", "reverse_kl"])
    assert not report.cache_hit and report.records > 0 and report.bootstrap_samples == 50
    assert {(g.teacher, g.method, g.split) for g in report.groups} == {
        (t, m, s) for t in TEACHERS for m in ("forward_kl", "reverse_kl") for s in ("correct", "incorrect", "mixed", "all")
    }
    assert [(e.method, e.rank) for e in report.ranking] == [("forward_kl", 1), ("forward_kl", 2), ("reverse_kl", 1), ("reverse_kl", 2)]
    assert {c.diagnostic for c in report.correlations} >= {"kl_pq", "js", "normalized_depth"}
    assert {q.tree_id for q in report.per_question} == set(trees)
    assert len(report.comparisons) == 4
    assert report.receipt["analysis"]["methods"] == ["forward_kl", "reverse_kl"] and report.receipt["tree_ids"] == trees
    again = client.score_teacher(trees, methods=["forward_kl", "reverse_kl"])
    assert again.cache_hit and _same_groups(again, report)
    one = client.score_teacher(trees, teachers=["demo"], methods=["forward_kl"])
    assert {g.teacher for g in one.groups} == {"demo"} and not one.cache_hit


def _same_groups(a, b) -> bool:
    return json.dumps(a.to_dict()["groups"]) == json.dumps(b.to_dict()["groups"])  # NaN-tolerant


def test_stream_alignments_mirror_engine_records(served, engine):
    server, client = served
    tree_id = client.build_tree(QUESTION).tree_id
    streamed = list(client.stream_alignments([tree_id], include_skipped=True, include_prefix_ids=True))
    assert streamed and all(r.tree_id == tree_id for r in streamed)
    from gradalign_engine.tree import RolloutTree

    tree = RolloutTree.from_dict(server.store.get_tree(tree_id))
    import dataclasses

    expected = engine.score_tree(tree, list(TEACHERS), ["forward_kl", "reverse_kl"], analysis=dataclasses.replace(engine.config.analysis, include_prefix_ids=True))

    def key(r):
        return (r.teacher, r.method, r.rollout_index, r.depth)

    got = sorted(streamed, key=key)
    want = sorted(expected, key=key)
    assert [json.dumps(r.to_dict(), sort_keys=True) for r in got] == [json.dumps(r.to_dict(), sort_keys=True) for r in want]


def test_stream_alignments_filters(served):
    server, client = served
    tree_id = client.build_tree(QUESTION).tree_id
    everything = list(client.stream_alignments(tree_id, include_skipped=True))
    assert all(r.prefix_token_ids is None for r in everything)
    scored = list(client.stream_alignments(tree_id))
    assert all(r.cosine is not None for r in scored) and len(scored) == sum(r.cosine is not None for r in everything)
    correct = list(client.stream_alignments(tree_id, split="correct", include_skipped=True))
    incorrect = list(client.stream_alignments(tree_id, split="incorrect", include_skipped=True))
    mixed = list(client.stream_alignments(tree_id, split="mixed", include_skipped=True))
    assert all(r.rollout_correct is True for r in correct) and all(r.rollout_correct is False for r in incorrect)
    assert mixed and all(r.rollout_correct is None and 0 < r.rollouts_correct < len(r.rollouts) for r in mixed)
    assert len(correct) + len(incorrect) + len(mixed) == len(everything)
    shallow = list(client.stream_alignments(tree_id, include_skipped=True, min_depth=1, max_depth=2, teachers=["demo"], methods=["rkl"]))
    assert all(1 <= r.depth <= 2 and r.teacher == "demo" and r.method == "reverse_kl" for r in shallow)
    with_prefix = list(client.stream_alignments(tree_id, include_skipped=True, include_prefix_ids=True))
    assert all(len(r.prefix_token_ids) == r.depth for r in with_prefix)


def test_vet_and_async_client(served, tmp_path):
    server, client = served
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(json.dumps(QUESTION) + "\n" + json.dumps(QUESTION_2) + "\n")
    seen = []
    report = client.vet(dataset, ["demo"], ["forward_kl"], limit=2, progress=lambda d, t, r: seen.append((d, t, r and r.question_id)))
    assert seen == [(0, 2, None), (1, 2, "q1"), (2, 2, "q2")]
    assert [e.teacher for e in report.ranking] == ["demo"]

    async def run():
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout=60) as aclient:
            assert await aclient.health() == "SERVING"
            models = await aclient.list_models()
            tree = await aclient.build_tree(QUESTION)
            records = [r async for r in aclient.stream_alignments([tree.tree_id], teachers="demo", methods="fkl")]
            areport = await aclient.vet([QUESTION], ["demo"], ["forward_kl"])
            with pytest.raises(GradalignError) as err:
                await aclient.score_teacher(["nope"])
            return models, tree, records, areport, err.value.code

    models, tree, records, areport, code = asyncio.run(run())
    assert len(models) == 3 and tree.summary.cache_hit and all(r.teacher == "demo" for r in records)
    assert areport.records > 0 and code == "NOT_FOUND"


def test_cli_vet_table_outputs_and_gate(served, tmp_path, capsys):
    server, client = served
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(json.dumps(QUESTION) + "\n" + json.dumps(QUESTION_2) + "\n")
    args = ["vet", "--server", f"127.0.0.1:{server.port}", "--dataset", str(dataset), "--teachers", "demo,cw", "--methods", "forward_kl", "--quiet"]
    out, csv_path = tmp_path / "records.jsonl", tmp_path / "table.csv"
    assert cli_main(args + ["--out", str(out), "--csv", str(csv_path), "--fail-below", "-2"]) == 0
    stdout = capsys.readouterr().out
    assert "forward_kl" in stdout and "demo" in stdout and "cw" in stdout
    lines = out.read_text().splitlines()
    assert lines and {json.loads(line)["teacher"] for line in lines} == {"demo", "cw"}
    assert csv_path.read_text().startswith("method,rank,teacher")
    assert cli_main(args + ["--fail-below", "2", "--fail-teacher", "cw"]) == 3
    assert "gate failed: cw" in capsys.readouterr().err
    assert cli_main(["health", "--server", f"127.0.0.1:{server.port}"]) == 0
    assert cli_main(["models", "--server", f"127.0.0.1:{server.port}"]) == 0


# ---------------------------------------------------------------------------------------------- errors


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
    from gradalign_client._proto.gradalign.v1 import gradalign_pb2 as pb, gradalign_pb2_grpc as pb_grpc

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
        client.build_tree(QUESTION, settings={"max_new_tokens": 2000})
    assert err.value.code == "RESOURCE_EXHAUSTED" and "limit" in err.value.details


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
    assert server.metrics.value("gradalign_job_duration_seconds_count", {"kind": "build_tree", "outcome": "DEADLINE_EXCEEDED"}) == 1


def test_cancel_stops_generation(served, engine):
    server, client = served
    _idle(server)
    stub_call = client._stub.BuildTree.future(build_tree_request(QUESTION, BIG, 8), timeout=120)
    _wait(lambda: server.jobs.running == 1)
    counters = engine.student.counters
    _wait(lambda: counters.snapshot()["generated_tokens"] > 0)
    time.sleep(0.3)
    started = time.monotonic()
    stub_call.cancel()
    _idle(server, timeout=10)
    stopped_after = time.monotonic() - started
    generated = counters.snapshot()["generated_tokens"]
    time.sleep(0.5)
    assert counters.snapshot()["generated_tokens"] == generated, "generation went on after the cancel"
    assert stopped_after < 5
    assert server.metrics.value("gradalign_job_duration_seconds_count", {"kind": "build_tree", "outcome": "CANCELLED"}) == 1
    with pytest.raises(grpc.FutureCancelledError):
        stub_call.result()


def test_failed_precondition_teacher_with_other_tokenizer(tiny_model_dir, tiny_model_dir_other_tokenizer):
    config = tiny_config(tiny_model_dir, name="other", kind="external", model=ModelSpec(model=str(tiny_model_dir_other_tokenizer), device="cpu"))
    server, port = create_server(config)
    try:
        with pytest.raises(Exception) as load_error:
            server.wait_until_ready(timeout=120)
        assert type(load_error.value).__name__ == "TokenizerMismatchError"
        with Client(f"127.0.0.1:{port}", timeout=10) as client:
            assert client.health() == "NOT_SERVING"
            with pytest.raises(GradalignError) as err:
                client.list_models()
        assert err.value.code == "FAILED_PRECONDITION" and "other" in err.value.details and "tokenizer" in err.value.details
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

    assert server.health.Check(health_pb2.HealthCheckRequest(service=""), None).status == health_pb2.HealthCheckResponse.NOT_SERVING

    server, port = create_server(engine, db_path=db, metrics_port=0)
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            again = client.build_tree(QUESTION_2, seed=11)
            assert again.tree_id == tree.tree_id and again.summary.cache_hit
            cached = client.score_teacher([tree.tree_id])
            assert cached.cache_hit and json.dumps(cached.to_dict()["ranking"]) == json.dumps(report.to_dict()["ranking"])
            assert len(list(client.stream_alignments([tree.tree_id], include_skipped=True))) == len(records)
        assert _metric(server, "gradalign_trees_built_total") == 0 and _metric(server, "gradalign_records_scored_total") == 0
    finally:
        server.stop(grace=1)


def test_serve_command_sigterm_drains_and_exits(tiny_model_dir, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        f'[student]\nmodel = "{tiny_model_dir}"\ndevice = "cpu"\n'
        '[[teachers]]\nname = "demo"\ncontext = "correct_demo"\n'
        "[sampling]\nmax_new_tokens = 8\n[rollouts]\nnum_rollouts = 2\nnodes_per_path = 1\ncandidate_top_k = 1\ncontinuations = 2\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in (".", "server", "client"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradalign_server", "--config", str(config), "--port", "0", "--metrics-port", "0", "--db", str(tmp_path / "s.sqlite")],
        stderr=subprocess.PIPE, text=True, env=env,
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
        events = [json.loads(line)["event"] for line in lines + rest.splitlines(True) if line.startswith("{")]
        assert proc.returncode == 0, rest
        assert "rpc" in events and events[-1] == "shutdown_done" and "shutdown_begin" in events
    finally:
        if proc.poll() is None:
            proc.kill()
