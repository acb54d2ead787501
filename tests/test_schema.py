"""One schema: the engine's dataclasses, the proto and the client's generated types agree field by field.

- Types: every engine field maps to a proto field of a compatible kind (str/string, int/integer,
  float/double, bool/bool, list/repeated, nested dataclass/message, ``X | None``/optional presence).
- Defaults: an object with every field at a non-default value, and one with every field at its
  default, round-trip engine -> message -> bytes -> message -> engine unchanged.
- The client's dataclasses are generated from the descriptors and current.
- JSONL: the same records give the same bytes from ``analyze``, from ``vet --out`` and from storage.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from gradalign_client._convert import message_to_dict
from gradalign_client._proto.gradalign.v1 import gradalign_pb2 as pb
from gradalign_engine import aggregate, cost, records, resident, tree
from gradalign_server import _wire

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [
    (records.AlignmentRecord, pb.AlignmentRecord),
    (records.Candidate, pb.Candidate),
    (records.Diagnostics, pb.Diagnostics),
    (resident.ModelEntry, pb.ModelEntry),
    (aggregate.Report, pb.Report),
    (aggregate.GroupStats, pb.GroupStats),
    (aggregate.SplitComparison, pb.SplitComparison),
    (aggregate.Correlation, pb.Correlation),
    (aggregate.RankEntry, pb.RankEntry),
    (aggregate.QuestionStats, pb.QuestionStats),
    (aggregate.ScreenedQuestion, pb.ScreenedQuestion),
    (cost.CostEstimate, pb.CostEstimate),
    (cost.Calibration, pb.Calibration),
]
_KINDS = {
    str: {FieldDescriptor.TYPE_STRING},
    bool: {FieldDescriptor.TYPE_BOOL},
    int: {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_UINT32,
    },
    float: {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT},
}


def _unwrap(hint):
    """(inner type, optional?, list?) of a field annotation."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if typing.get_origin(hint) in (list, tuple):
        return typing.get_args(hint)[0], optional, True
    return hint, optional, False


@pytest.mark.parametrize("cls,message", PAIRS, ids=[m.DESCRIPTOR.name for _, m in PAIRS])
def test_every_engine_field_has_a_proto_field_of_its_type(cls, message):
    hints = typing.get_type_hints(cls)
    fields = message.DESCRIPTOR.fields_by_name
    flags = {n for n in fields if n.startswith("has_") and n[4:] in fields}
    assert {f.name for f in dataclasses.fields(cls)} == set(fields) - flags, message.DESCRIPTOR.name
    for f in dataclasses.fields(cls):
        proto = fields[f.name]
        inner, optional, repeated = _unwrap(hints[f.name])
        is_map = proto.type == FieldDescriptor.TYPE_MESSAGE and proto.message_type.GetOptions().map_entry
        assert repeated == (proto.is_repeated and not is_map), f"{cls.__name__}.{f.name}: list vs repeated"
        if typing.get_origin(inner) is dict or inner is dict:
            assert proto.type == FieldDescriptor.TYPE_MESSAGE, f.name  # a Struct or a map
        elif dataclasses.is_dataclass(inner):
            assert proto.message_type.name == inner.__name__, f"{cls.__name__}.{f.name}"
        else:
            assert proto.type in _KINDS[inner], f"{cls.__name__}.{f.name}: {inner} vs proto type {proto.type}"
        if optional and not repeated:
            assert proto.has_presence, f"{cls.__name__}.{f.name} may be None: the proto field must be optional"
        if repeated and optional:
            assert f"has_{f.name}" in fields, f"{cls.__name__}.{f.name} may be None: the proto needs has_{f.name}"


def _filled(cls, salt: int):
    """An instance with every field set to a non-default value (nested ones too)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for k, f in enumerate(dataclasses.fields(cls)):
        inner, _, repeated = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(inner):
            value = _filled(inner, salt + k)
        elif typing.get_origin(inner) is dict or inner is dict:
            value = {"k": salt + k} if f.name == "skip_reasons" else {"note": f"v{salt + k}"}
        elif inner is bool:
            value = True
        elif inner is int:
            value = salt + k + 1
        elif inner is float:
            value = 0.25 + salt + k
        else:
            value = f"s{salt}-{k}"
        values[f.name] = [value, value] if repeated else value
    return cls(**values)


def _same(a, b) -> bool:
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b and type(a) is type(b)


def _round_trip(obj, message):
    wire = _wire.to_message(obj, message()).SerializeToString()
    return _wire.from_message(type(obj), message.FromString(wire))


@pytest.mark.parametrize("cls,message", PAIRS, ids=[m.DESCRIPTOR.name for _, m in PAIRS])
def test_values_and_defaults_survive_the_wire(cls, message):
    filled = _filled(cls, 3)
    assert _same(_round_trip(filled, message), filled)
    required = {
        f.name: None
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    if not required:  # every field has a default: the default object must come back as it went
        empty = cls()
        assert _same(_round_trip(empty, message), empty)


def test_record_with_unset_optionals_and_nan_survives_the_wire():
    record = _filled(records.AlignmentRecord, 1)
    record = dataclasses.replace(
        record,
        cosine=None,
        rollout_correct=None,
        teacher_advantage=None,
        diagnostics=None,
        prefix_token_ids=None,
        demo_source=None,
        rollouts_correct=None,
        candidates=[dataclasses.replace(record.candidates[0], q=float("nan"))],
    )
    assert _same(_round_trip(record, pb.AlignmentRecord), record)
    empty_prefix = dataclasses.replace(record, prefix_token_ids=[])
    assert _round_trip(empty_prefix, pb.AlignmentRecord).prefix_token_ids == []


def test_tree_summary_and_settings_match_the_engine():
    summary = _filled(tree.TreeSummary, 2)
    message = _wire.summary_to_message(dataclasses.asdict(summary), pb.TreeSummary())
    fields = {f.name for f in pb.TreeSummary.DESCRIPTOR.fields}
    assert {f.name for f in dataclasses.fields(tree.TreeSummary)} - {
        "tree_id",
        "question_id",
    } == fields  # ids travel beside
    back = message_to_dict(pb.TreeSummary.FromString(message.SerializeToString()))
    assert all(_same(back[name], getattr(summary, name)) for name in fields)


def test_client_types_are_generated_from_the_descriptors_and_current():
    proc = subprocess.run(
        [sys.executable, "scripts/gen_client_types.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
