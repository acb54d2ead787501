"""The light client: no heavy imports, conversions, request validation, table, CLI errors (no server)."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import gradalign_client as gc
from gradalign_client import GradalignError
from gradalign_client import _requests as rq
from gradalign_client._convert import dict_to_message, message_to_dict
from gradalign_client._proto.gradalign.v1 import gradalign_pb2 as pb
from gradalign_client._table import format_table, gate_value, write_csv
from gradalign_client.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent


def test_client_imports_without_torch_or_engine():
    code = (
        "import sys, gradalign_client, gradalign_client.cli; "
        "heavy = sorted(m for m in ('torch', 'transformers', 'gradalign_engine', 'gradalign_server', 'numpy') "
        "if m in sys.modules); "
        "print(','.join(heavy))"
    )
    env_path = f"{ROOT / 'client'}"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": ""},
        check=True,
    )
    assert out.stdout.strip() == "", f"the client imported {out.stdout.strip()}"


def test_public_surface():
    assert set(gc.__all__) >= {
        "Client",
        "AsyncClient",
        "GradalignError",
        "AlignmentRecord",
        "Report",
        "RolloutSettings",
    }
    for name in gc.__all__:
        assert getattr(gc, name).__doc__, f"{name} has no docstring"
    for method in ("list_models", "build_tree", "score_teacher", "stream_alignments", "vet", "health"):
        doc = getattr(gc.Client, method).__doc__
        assert "Returns" in doc and "Raises" in doc, method


def _record_dict(**overrides) -> dict:
    record = {
        "question_id": "q1",
        "tree_id": "t" * 32,
        "rollout_index": 2,
        "rollout_correct": False,
        "depth": 3,
        "path_length": 7,
        "normalized_depth": 3 / 7,
        "teacher": "demo",
        "method": "forward_kl",
        "candidates": [
            {
                "token_id": 5,
                "token_text": "a",
                "p": 0.5,
                "q": 0.25,
                "p_renorm": 0.6,
                "q_renorm": 0.4,
                "visits": 4,
                "successes": 1,
                "estimate": 0.25,
                "ci_low": 0.05,
                "ci_high": 0.7,
                "sampled": True,
                "forced": True,
                "in_support": True,
            },
            {
                "token_id": 9,
                "token_text": "b",
                "p": 0.1,
                "q": float("nan"),
                "p_renorm": 0.0,
                "q_renorm": 0.0,
                "visits": 0,
                "successes": 0,
                "estimate": float("nan"),
                "ci_low": 0.0,
                "ci_high": 1.0,
                "sampled": False,
                "forced": True,
                "in_support": False,
            },
        ],
        "ideal": [0.1, -0.1],
        "distill": [0.2, -0.3],
        "cosine": 0.97,
        "skip_reason": None,
        "ideal_norm": 0.14,
        "distill_norm": 0.36,
        "teacher_advantage": None,
        "diagnostics": None,
        "sampled_token_id": 5,
        "prefix_token_ids": None,
        "rollout_indices": [2, 4],
        "rollouts_correct": 0,
        "demo_source": "rollout:0",
        "wrong_source": None,
        "schema_version": 2,
        "extra": {"k": "v"},
    }
    record.update(overrides)
    return record


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN == NaN in JSON text


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"cosine": None, "skip_reason": "too_few_candidates"},
        {"prefix_token_ids": []},
        {"rollout_correct": None, "rollouts_correct": 1, "demo_source": "dataset", "wrong_source": "rollout:4"},
        {"prefix_token_ids": [1, 2, 3], "teacher_advantage": -0.5},
        {
            "diagnostics": {
                "kl_pq": 0.1,
                "kl_qp": 0.2,
                "js": 0.03,
                "l2": 0.4,
                "cos_pq": 0.9,
                "student_entropy": 2.0,
                "teacher_entropy": 2.1,
            }
        },
    ],
)
def test_record_round_trip_is_exact(overrides):
    record = _record_dict(**overrides)
    msg = pb.StreamAlignmentsResponse()
    dict_to_message(record, msg.record)
    wire = pb.StreamAlignmentsResponse.FromString(msg.SerializeToString())
    typed = rq.read_record(wire)
    assert isinstance(typed, gc.AlignmentRecord) and isinstance(typed.candidates[0], gc.Candidate)
    assert _same(typed.to_dict(), record)
    assert math.isnan(typed.candidates[1].estimate)
    assert typed.skipped == (record["cosine"] is None)


def test_settings_validation_names_the_field():
    with pytest.raises(GradalignError) as err:
        rq.build_tree_request({"id": "q", "question": "x", "answer": "1"}, settings={"num_rolouts": 3})
    assert err.value.code == "INVALID_ARGUMENT" and "settings.num_rolouts" in err.value.details
    with pytest.raises(GradalignError) as err:
        rq.build_tree_request({"id": "q", "question": "x"})
    assert "answer" in err.value.details
    with pytest.raises(GradalignError, match="split"):
        rq.stream_alignments_request(["t"], split="both")
    with pytest.raises(GradalignError, match="tree_ids"):
        rq.score_teacher_request([])


def test_build_tree_request_carries_optional_settings():
    req = rq.build_tree_request(
        {"id": "q", "question": "x", "answer": "1", "choices": None, "summary": "s"},
        settings=gc.RolloutSettings(num_rollouts=3, temperature=0.7),
        seed=5,
        target_teachers="a, b",
    )
    assert req.settings.HasField("num_rollouts") and not req.settings.HasField("continuations")
    assert req.seed == 5 and list(req.target_teachers) == ["a", "b"]
    assert message_to_dict(req.question)["extra"] == {"summary": "s"}


def test_read_questions_names_file_and_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "question": "x", "answer": 3}\n\n{"id": "b"}\n')
    it = gc.read_questions(path)
    first = next(it)
    assert first.answer == "3" and first.verifier == "numeric"
    with pytest.raises(ValueError, match=r"q\.jsonl:3: .*question"):
        next(it)


def _report() -> gc.Report:
    nan = float("nan")
    return gc.Report(
        records=10,
        seed=0,
        bootstrap_unit="rollout",
        bootstrap_samples=100,
        confidence=0.95,
        groups=[
            gc.GroupStats(
                "good", "forward_kl", "all", 5, 1, 3, 2, 0.3, 0.1, 0.5, 0.31, 0.29, 0.8, 0.01, {"too_few_candidates": 1}
            ),
            gc.GroupStats("bad", "forward_kl", "all", 5, 0, 3, 2, -0.2, -0.4, 0.0, -0.2, -0.1, 0.2, -0.01, {}),
        ],
        comparisons=[gc.SplitComparison("good", "forward_kl", 3, 2, 0.4, 0.15, 0.25, 0.0, 0.5, 0.04, 6.0, 0.1)],
        ranking=[
            gc.RankEntry("forward_kl", 1, "good", 0.3, 0.1, 0.5, 5),
            gc.RankEntry("forward_kl", 2, "bad", -0.2, nan, nan, 5),
        ],
    )


def test_table_csv_and_gate(tmp_path):
    report = _report()
    text = format_table(report)
    assert text.index("good") < text.index("bad") and "95% CI" in text
    assert "skipped records by reason: too_few_candidates 1" in text
    write_csv(report, str(tmp_path / "t.csv"))
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[0].startswith("method,rank,teacher,mean_cosine") and len(rows) == 3
    assert gate_value(report, "bad", None) == ("forward_kl", -0.2)
    with pytest.raises(KeyError):
        gate_value(report, "nobody", None)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_connection_refused_is_one_line_exit_2(capsys, tmp_path):
    dataset = tmp_path / "q.jsonl"
    dataset.write_text('{"id": "a", "question": "x", "answer": "1"}\n')
    port = _closed_port()
    code = cli_main(
        [
            "vet",
            "--server",
            f"127.0.0.1:{port}",
            "--dataset",
            str(dataset),
            "--teachers",
            "a",
            "--timeout",
            "5",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "cannot reach" in err and str(port) in err
    assert cli_main(["health", "--server", f"127.0.0.1:{port}"]) == 2


def test_cli_missing_extra_is_actionable(capsys, monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name.startswith("gradalign_server"):
            raise ModuleNotFoundError("No module named 'grpc_health'", name="grpc_health")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    assert cli_main(["demo"]) == 2
    assert "pip install 'gradalign[server]'" in capsys.readouterr().err


def test_error_type():
    err = GradalignError("UNAVAILABLE", "failed to connect to all addresses")
    assert err.unreachable and err.retryable and str(err).startswith("UNAVAILABLE")
    assert not GradalignError("NOT_FOUND", "unknown tree 'x'").retryable
