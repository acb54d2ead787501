"""Generic protobuf <-> plain-data conversion, driven by the message descriptors.

Used by the client (proto -> its dataclasses) and by the server (engine dataclasses -> proto), so
the two sides agree on one set of rules:

- An unset ``optional`` scalar or message field is ``None``; ``None`` leaves it unset.
- A repeated field ``xs`` paired with a bool ``has_xs`` carries ``None`` as ``has_xs = false``
  (protobuf cannot tell an empty list from an absent one).
- ``google.protobuf.Struct`` and scalar ``map`` fields are plain dicts; enums travel as value names.
- Floats pass through unchanged, NaN and infinities included.

Knows nothing of gRPC channels, the engine or torch.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .canonical import json_safe

__all__ = ["message_to_dict", "dict_to_message", "from_dict", "nan_to_none"]

T = TypeVar("T")
_STRUCT = "google.protobuf.Struct"


def _has_flag(descriptor, name: str) -> bool:
    flag = descriptor.fields_by_name.get("has_" + name)
    return flag is not None and flag.type == FieldDescriptor.TYPE_BOOL


def _is_map(f: FieldDescriptor) -> bool:
    """Scalar-valued map fields (the only kind the gradalign protos use)."""
    return f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry


def message_to_dict(msg: Message) -> dict[str, Any]:
    """Every field of ``msg`` as plain Python data (see the module docstring for the rules)."""
    desc = msg.DESCRIPTOR
    out: dict[str, Any] = {}
    for f in desc.fields:
        name = f.name
        if name.startswith("has_") and name[4:] in desc.fields_by_name:
            continue  # presence flag of a repeated field, folded into that field
        value = getattr(msg, name)
        if _is_map(f):
            out[name] = dict(value)
        elif f.is_repeated:
            if _has_flag(desc, name) and not getattr(msg, "has_" + name):
                out[name] = None
            elif f.type == FieldDescriptor.TYPE_MESSAGE:
                out[name] = [_value_to_py(f, v) for v in value]
            elif f.type == FieldDescriptor.TYPE_ENUM:
                out[name] = [f.enum_type.values_by_number[v].name for v in value]
            else:
                out[name] = list(value)
        elif f.has_presence and not msg.HasField(name):
            out[name] = None
        else:
            out[name] = _value_to_py(f, value)
    return out


def _value_to_py(f: FieldDescriptor, value: Any) -> Any:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        if f.message_type.full_name == _STRUCT:
            return json_format.MessageToDict(value)
        return message_to_dict(value)
    if f.type == FieldDescriptor.TYPE_ENUM:
        return f.enum_type.values_by_number[value].name
    return value


def dict_to_message(data: Mapping[str, Any], msg: Message, *, strict: bool = False) -> Message:
    """Fill ``msg`` from a mapping (or a dataclass) and return it.

    Keys the message lacks are ignored unless ``strict`` (then ``KeyError`` names the key).
    """
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    desc = msg.DESCRIPTOR
    for key, value in data.items():
        f = desc.fields_by_name.get(key)
        if f is None:
            if strict:
                raise KeyError(f"{desc.full_name} has no field {key!r}")
            continue
        if _is_map(f):
            getattr(msg, key).update(value or {})
        elif f.is_repeated:
            if value is None:
                continue  # has_<key> stays false
            if _has_flag(desc, key):
                setattr(msg, "has_" + key, True)
            target = getattr(msg, key)
            for item in value:
                if f.type == FieldDescriptor.TYPE_MESSAGE:
                    _fill(f, target.add(), item, strict)
                else:
                    target.append(_scalar(f, item))
        elif value is None:
            continue
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            _fill(f, getattr(msg, key), value, strict)
        else:
            setattr(msg, key, _scalar(f, value))
    return msg


def _fill(f: FieldDescriptor, target: Message, value: Any, strict: bool) -> None:
    if f.message_type.full_name == _STRUCT:
        target.SetInParent()
        target.update(json_safe(value))
    elif isinstance(value, Message):
        target.CopyFrom(value)
    else:
        target.SetInParent()
        dict_to_message(value, target, strict=strict)


def _scalar(f: FieldDescriptor, value: Any) -> Any:
    if f.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
        return f.enum_type.values_by_name[value].number
    if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return float(value)
    return value


def nan_to_none(value: float | None) -> float | None:
    """``None`` for NaN (and for ``None``), the value otherwise."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def from_dict(cls: type[T], data: Mapping[str, Any] | None) -> T:
    """Build dataclass ``cls`` (recursively, through its type hints) from a mapping.

    Keys ``cls`` lacks are dropped, so an older client reads a newer server's messages.
    """
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if data is not None and f.name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name])
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value) if len(inner) == 1 else value
    if origin in (list, tuple) and args:
        items = [_coerce(args[0], v) for v in value]
        return items if origin is list else tuple(items)
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return from_dict(hint, value)
    return value
