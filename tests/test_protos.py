"""The wire schema: stubs current, every message and field commented, proto mirrors the engine's dataclasses."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "protos" / "gradalign" / "v1" / "gradalign.proto"
sys.path.insert(0, str(ROOT / "scripts"))


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stubs_are_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    gen = _gen_module()
    from importlib.metadata import version

    if version("grpcio-tools") != gen.GRPCIO_TOOLS_VERSION:
        pytest.skip(f"stubs are generated with grpcio-tools {gen.GRPCIO_TOOLS_VERSION}")
    gen.generate(tmp_path)
    lines = gen.diff(tmp_path, gen.PACKAGE_DIR)
    assert not lines, "stubs are stale; run python scripts/gen_protos.py\n" + "".join(lines[:60])


def test_stub_imports_are_relative():
    stub_dir = ROOT / "client" / "gradalign_client" / "_proto" / "gradalign" / "v1"
    text = (stub_dir / "gradalign_pb2_grpc.py").read_text()
    assert "from . import gradalign_pb2" in text
    assert not re.search(r"^(from|import) gradalign\.", text, re.MULTILINE)


def test_every_message_field_and_rpc_is_commented():
    """Each message, enum, enum value, field and rpc line is preceded by a // comment line."""
    lines = PROTO.read_text().splitlines()
    declaration = re.compile(
        r"^\s*(message|enum|rpc|service)\s+\w+|^\s*(optional\s+|repeated\s+)?[\w.<>, ]+\s+\w+\s*=\s*\d+;"
    )
    missing = []
    for i, line in enumerate(lines):
        if declaration.match(line) and not line.strip().startswith("//"):
            if not lines[i - 1].strip().startswith("//"):
                missing.append(f"{i + 1}: {line.strip()}")
    assert not missing, "uncommented declarations:\n" + "\n".join(missing)


def _proto_fields(message) -> set[str]:
    return {f.name for f in message.DESCRIPTOR.fields}


def test_proto_mirrors_engine_records():
    from gradalign_client._proto.gradalign.v1 import gradalign_pb2 as pb
    from gradalign_engine import records

    for cls, msg in [
        (records.AlignmentRecord, pb.AlignmentRecord),
        (records.Candidate, pb.Candidate),
        (records.Diagnostics, pb.Diagnostics),
    ]:
        engine_fields = {f.name for f in dataclasses.fields(cls)}
        extra = _proto_fields(msg) - engine_fields
        assert engine_fields <= _proto_fields(msg), f"{msg.__name__} lacks {engine_fields - _proto_fields(msg)}"
        assert extra <= {"has_prefix_token_ids"}, f"{msg.__name__} has fields the engine lacks: {extra}"


def test_proto_mirrors_engine_report():
    from gradalign_client._proto.gradalign.v1 import gradalign_pb2 as pb
    from gradalign_engine import aggregate

    pairs = [
        (aggregate.Report, pb.Report),
        (aggregate.GroupStats, pb.GroupStats),
        (aggregate.SplitComparison, pb.SplitComparison),
        (aggregate.Correlation, pb.Correlation),
        (aggregate.RankEntry, pb.RankEntry),
        (aggregate.QuestionStats, pb.QuestionStats),
    ]
    for cls, msg in pairs:
        assert {f.name for f in dataclasses.fields(cls)} == _proto_fields(msg), msg.__name__


def test_settings_cover_every_config_field():
    from gradalign_client._proto.gradalign.v1 import gradalign_pb2 as pb
    from gradalign_engine.config import AnalysisConfig, RolloutConfig, SamplingConfig

    wanted = {f.name for f in dataclasses.fields(RolloutConfig)} | {f.name for f in dataclasses.fields(SamplingConfig)}
    assert _proto_fields(pb.RolloutSettings) == wanted
    for f in pb.RolloutSettings.DESCRIPTOR.fields:
        assert f.has_presence, f"RolloutSettings.{f.name} must be optional (unset = server default)"
    # methods travel on the request; include_prefix_ids is a stream option.
    analysis = {f.name for f in dataclasses.fields(AnalysisConfig)} - {"methods", "include_prefix_ids"}
    assert _proto_fields(pb.AnalysisSettings) == analysis
    assert "include_prefix_ids" in _proto_fields(pb.StreamAlignmentsRequest)


def test_client_dataclasses_mirror_proto():
    import gradalign_client as gc
    from gradalign_client._proto.gradalign.v1 import gradalign_pb2 as pb

    for cls, msg in [
        (gc.ModelEntry, pb.ModelEntry),
        (gc.TreeSummary, pb.TreeSummary),
        (gc.Candidate, pb.Candidate),
        (gc.Diagnostics, pb.Diagnostics),
        (gc.GroupStats, pb.GroupStats),
        (gc.SplitComparison, pb.SplitComparison),
        (gc.Correlation, pb.Correlation),
        (gc.RankEntry, pb.RankEntry),
        (gc.QuestionStats, pb.QuestionStats),
        (gc.RolloutSettings, pb.RolloutSettings),
        (gc.AnalysisSettings, pb.AnalysisSettings),
    ]:
        assert {f.name for f in dataclasses.fields(cls)} == _proto_fields(msg), cls.__name__
    assert {f.name for f in dataclasses.fields(gc.AlignmentRecord)} == _proto_fields(pb.AlignmentRecord) - {
        "has_prefix_token_ids"
    }
    assert {f.name for f in dataclasses.fields(gc.Report)} - {"cache_hit", "receipt"} == _proto_fields(pb.Report)


def test_engine_model_entry_matches_proto():
    from gradalign_client._proto.gradalign.v1 import gradalign_pb2 as pb
    from gradalign_engine.pipeline import ModelEntry

    assert {f.name for f in dataclasses.fields(ModelEntry)} == _proto_fields(pb.ModelEntry)


def test_tree_summary_matches_engine():
    from gradalign_client._proto.gradalign.v1 import gradalign_pb2 as pb
    from gradalign_engine.tree import TreeSummary

    # tree_id and question_id travel on BuildTreeResponse itself.
    assert {f.name for f in dataclasses.fields(TreeSummary)} - {"tree_id", "question_id"} == _proto_fields(
        pb.TreeSummary
    )
