"""The gRPC service over a real channel on 127.0.0.1:0, with a tiny random-weight model: the RPCs,
their caches, the stream, the client, the CLI and the metrics (errors: test_service_errors.py)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest

pytest.importorskip("torch")
pytest.importorskip("grpc_health")

from service_setup import BIG, QUESTION, QUESTION_2, TEACHERS, _idle, _metric, tiny_config  # noqa: E402,F401

from gradalign_client import AsyncClient, Client, GradalignError  # noqa: E402
from gradalign_client.cli import main as cli_main  # noqa: E402
from gradalign_server import create_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def engine(service_engine):
    """The session's engine (tests/conftest.py), shared with the servers these tests start."""
    return service_engine


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
    before = {
        n: _metric(server, n)
        for n in ("gradalign_trees_built_total", "gradalign_tokens_generated_total", "gradalign_rollouts_total")
    }
    count = _metric(server, 'gradalign_rpc_duration_seconds_count{code="OK",method="BuildTree"}')
    result = client.build_tree(QUESTION, seed=2)
    assert _metric(server, "gradalign_trees_built_total") == before["gradalign_trees_built_total"] + 1
    assert (
        _metric(server, "gradalign_tokens_generated_total")
        == before["gradalign_tokens_generated_total"] + result.summary.tokens_generated
    )
    assert _metric(server, "gradalign_rollouts_total") == before["gradalign_rollouts_total"] + 3
    assert _metric(server, 'gradalign_rpc_duration_seconds_count{code="OK",method="BuildTree"}') == count + 1
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    for name in (
        "gradalign_jobs_running",
        "gradalign_jobs_queued",
        "gradalign_model_info",
        "gradalign_teacher_tokens_scored_total",
        "gradalign_continuations_total",
        "gradalign_nodes_analysed_total",
        'gradalign_rpc_duration_seconds_bucket{code="OK",le="0.005",method="BuildTree"}',
    ):
        assert name in text, name


def test_score_teacher_report_and_cache(served):
    server, client = served
    trees = [client.build_tree(q).tree_id for q in (QUESTION, QUESTION_2)]
    report = client.score_teacher(trees, methods=["fkl", "reverse_kl"])
    assert not report.cache_hit and report.records > 0 and report.bootstrap_samples == 50
    assert {(g.teacher, g.method, g.split) for g in report.groups} == {
        (t, m, s)
        for t in TEACHERS
        for m in ("forward_kl", "reverse_kl")
        for s in ("correct", "incorrect", "mixed", "all")
    }
    assert [(e.method, e.rank) for e in report.ranking] == [
        ("forward_kl", 1),
        ("forward_kl", 2),
        ("reverse_kl", 1),
        ("reverse_kl", 2),
    ]
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

    expected = engine.score_tree(
        tree,
        list(TEACHERS),
        ["forward_kl", "reverse_kl"],
        analysis=dataclasses.replace(engine.config.analysis, include_prefix_ids=True),
    )

    def key(r):
        return (r.teacher, r.method, r.rollout_index, r.depth)

    got = sorted(streamed, key=key)
    want = sorted(expected, key=key)
    assert [json.dumps(r.to_dict(), sort_keys=True) for r in got] == [
        json.dumps(r.to_dict(), sort_keys=True) for r in want
    ]


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
    shallow = list(
        client.stream_alignments(
            tree_id, include_skipped=True, min_depth=1, max_depth=2, teachers=["demo"], methods=["rkl"]
        )
    )
    assert all(1 <= r.depth <= 2 and r.teacher == "demo" and r.method == "reverse_kl" for r in shallow)
    with_prefix = list(client.stream_alignments(tree_id, include_skipped=True, include_prefix_ids=True))
    assert all(len(r.prefix_token_ids) == r.depth for r in with_prefix)


def test_vet_and_async_client(served, tmp_path):
    server, client = served
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(json.dumps(QUESTION) + "\n" + json.dumps(QUESTION_2) + "\n")
    seen = []
    report = client.vet(
        dataset, ["demo"], ["forward_kl"], limit=2, progress=lambda d, t, r: seen.append((d, t, r and r.question_id))
    )
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
    args = [
        "vet",
        "--server",
        f"127.0.0.1:{server.port}",
        "--dataset",
        str(dataset),
        "--teachers",
        "demo,cw",
        "--methods",
        "forward_kl",
        "--quiet",
    ]
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


def test_jsonl_is_the_same_bytes_from_analyze_vet_and_storage(served, engine, tmp_path):
    """One NaN rule, one dialect: the same records give byte-identical lines whichever way they come."""
    from gradalign_client.canonical import json_line
    from gradalign_engine.tree import RolloutTree
    from gradalign_server.export import export_records

    server, client = served
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(json.dumps(QUESTION) + "\n")
    out = tmp_path / "vet.jsonl"
    code = cli_main(
        [
            "vet",
            "--server",
            f"127.0.0.1:{server.port}",
            "--dataset",
            str(dataset),
            "--teachers",
            "demo,cw",
            "--methods",
            "forward_kl,reverse_kl",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    vet_lines = out.read_text(encoding="utf-8").splitlines()
    tree_id = client.build_tree(QUESTION, target_teachers=["demo", "cw"]).tree_id
    tree = RolloutTree.from_dict(server.store.get_tree(tree_id))
    analyze_lines = [
        json_line(r.to_dict()) for r in engine.score_tree(tree, ["demo", "cw"], ["forward_kl", "reverse_kl"])
    ]
    exported = tmp_path / "store.jsonl"
    export_records(server.store, exported)
    stored = [line for line in exported.read_text(encoding="utf-8").splitlines() if f'"tree_id":"{tree_id}"' in line]
    assert len(analyze_lines) > 4 and any("null" in line for line in analyze_lines)  # some records carry NaN -> null
    assert sorted(vet_lines) == sorted(analyze_lines) == sorted(stored)
    assert all("NaN" not in line for line in vet_lines)
