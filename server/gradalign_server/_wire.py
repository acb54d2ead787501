"""The one converter between the engine's dataclasses and the gradalign.v1 messages.

The proto (``protos/gradalign/v1/gradalign.proto``) is the single source of the wire types; the
engine's plain dataclasses (records, tree summaries, reports, model entries) map onto its messages
field by field, by name, through :func:`to_message` and :func:`from_message`, driven by the message
descriptors. Rules:
- an unset ``optional`` field is ``None`` and ``None`` leaves it unset;
- a repeated field ``xs`` paired with a bool ``has_xs`` carries ``None`` as ``has_xs = false``;
- floats pass unchanged, NaN included; ``google.protobuf.Struct`` fields are plain dicts.
``tests/test_schema.py`` checks every field's type and default on both sides.

The record codec of the store (:func:`encode_records`, :func:`decode_records`) is protobuf bytes too.
Requests are read here as well: a Question message into the engine's Question, settings into the
config dataclasses' overrides. No gRPC calls, no engine logic.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from gradalign_client._convert import dict_to_message, message_to_dict
from gradalign_client._proto.gradalign.v1 import gradalign_pb2 as pb
from gradalign_client.canonical import json_safe
from gradalign_engine.data import Question
from gradalign_engine.records import AlignmentRecord

__all__ = [
    "to_message",
    "from_message",
    "encode_records",
    "decode_records",
    "question_from_message",
    "given_fields",
    "summary_to_message",
    "json_safe",
]

T = TypeVar("T")


def to_message(obj: Any, message: Message) -> Message:
    """Fill ``message`` from a dataclass (recursively) and return it."""
    return dict_to_message(obj, message, strict=True)


def from_message(cls: type[T], message: Message) -> T:
    """The dataclass ``cls`` a message maps to (nested dataclasses by their type hints)."""
    return _build(cls, message_to_dict(message))


def _build(cls: type, data: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name])
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value) if len(inner) == 1 else value
    if origin in (list, tuple) and args:
        items = [_coerce(args[0], v) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict:
        return dict(value)
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return _build(hint, value)
    return value


def encode_records(records: list[AlignmentRecord]) -> bytes:
    """Records as one serialized RecordBatch message (the store's blob)."""
    batch = pb.RecordBatch()
    for record in records:
        to_message(record, batch.records.add())
    return batch.SerializeToString()


def decode_records(blob: bytes) -> list[AlignmentRecord]:
    batch = pb.RecordBatch.FromString(blob)
    return [from_message(AlignmentRecord, m) for m in batch.records]


def summary_to_message(summary: Mapping[str, Any], message: pb.TreeSummary) -> pb.TreeSummary:
    """A tree summary dict (TreeSummary fields, ``cache_hit``; its ids travel beside it) as a message."""
    fields = message.DESCRIPTOR.fields_by_name
    return dict_to_message({k: v for k, v in summary.items() if k in fields}, message, strict=True)


def question_from_message(q: pb.Question) -> Question:
    """The engine's Question for a request's Question message (DatasetError names a bad field)."""
    return Question(
        id=q.id,
        question=q.text,
        answer=q.answer,
        verifier=q.verifier or "numeric",
        choices=tuple(q.choices),
        solution=q.solution or None,
        extra=json_format.MessageToDict(q.extra) if q.HasField("extra") else {},
    )


def given_fields(message: Message) -> dict[str, Any]:
    """The fields a settings message sets (its ``optional`` fields that are present)."""
    return {k: v for k, v in message_to_dict(message).items() if v is not None}
