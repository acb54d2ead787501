"""The one JSON dialect of gradalign: NaN and infinities are null, and records are one line each.

Every JSONL file gradalign writes (``analyze --out``, ``vet --out``, the study, exports of the
server's store) goes through :func:`json_line`, so the same records give the same bytes whichever
way they were obtained: keys sorted, no spaces, UTF-8 kept, tuples as lists, dataclasses as dicts.

Pure Python, no dependencies: the engine, the server and the light client all import it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

__all__ = ["json_safe", "json_line"]


def json_safe(value: Any) -> Any:
    """``value`` as JSON data: non-finite floats become None, tuples lists, dataclasses dicts, keys strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    return str(value)


def json_line(value: Any) -> str:
    """One canonical JSON line (no trailing newline) of a record or any plain data."""
    return json.dumps(json_safe(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
