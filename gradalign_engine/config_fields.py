"""How a config field is declared and checked: its help text, what it affects, and range checks.

Every field of every config dataclass is declared with :func:`setting`, which records its help text
(the one source of the TOML reference, the CLI help and error messages) and what it affects
(:data:`AFFECTS`; a test fails on a field without it). The ``check_*`` helpers raise
:class:`~gradalign_engine.errors.ConfigError` naming the field and the bad value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any

from .errors import ConfigError

__all__ = [
    "AFFECTS",
    "setting",
    "settings_affecting",
    "check",
    "check_int",
    "check_number",
    "check_choice",
    "check_bool",
]

#: What a setting changes, in the ``affects`` metadata of every config field: "tree" (the rollouts: part
#: of the tree id), "records" (the alignment records: part of the records' cache key), "report" (only the
#: aggregate report), "teacher" and "model" (which models run: their specs and hashes are part of the
#: keys), "selection" (which records are asked for), "presentation" or "resources" (how results are shown
#: or how much memory is used; no result changes), and "study" (the study command's own settings).
AFFECTS = ("tree", "records", "report", "teacher", "model", "selection", "presentation", "resources", "study")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, affects: str, factory: Any = None) -> Any:
    """A dataclass field with its help text and what it affects."""
    if affects not in AFFECTS:
        raise ValueError(f"affects={affects!r}: must be one of {', '.join(AFFECTS)}")
    metadata = {"help": help, "affects": affects}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def settings_affecting(config: Any, kind: str) -> dict[str, Any]:
    """The fields of a config dataclass tagged ``affects=kind``, with their values."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata.get("affects") == kind}


def check(ok: bool, name: str, value: Any, reason: str) -> None:
    if not ok:
        raise ConfigError(name, value, reason)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(config: Any, name: str, lo: int | None = None, hi: int | None = None, reason: str | None = None) -> None:
    """An integer (not a bool) in [lo, hi]; the message says the range."""
    value = getattr(config, name)
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (lo is None or value >= lo) and (hi is None or value <= hi)
    if reason is None:
        reason = f"must be an integer in [{lo}, {hi}]" if hi is not None else f"must be an integer >= {lo}"
    check(ok, name, value, reason)


def check_number(
    config: Any,
    name: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    open_lo: bool = False,
    open_hi: bool = False,
    reason: str | None = None,
) -> None:
    """A finite number in the interval from ``lo`` to ``hi`` (each end open or closed)."""
    value = getattr(config, name)
    ok = _number(value)
    if ok and lo is not None:
        ok = value > lo if open_lo else value >= lo
    if ok and hi is not None:
        ok = value < hi if open_hi else value <= hi
    if reason is None:
        if hi is None:
            reason = f"must be a number {'>' if open_lo else '>='} {lo:g}"
        else:
            reason = f"must be in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
    check(ok, name, value, reason)


def check_choice(config: Any, name: str, choices: tuple[str, ...], reason: str) -> None:
    check(getattr(config, name) in choices, name, getattr(config, name), reason)


def check_bool(config: Any, name: str) -> None:
    check(isinstance(getattr(config, name), bool), name, getattr(config, name), "must be true or false")
