"""The probability floor shared by the closed forms (:mod:`.gradients`) and the diagnostics (:mod:`.diagnostics`).

A probability inside a logarithm is floored at ``PROB_FLOOR`` = 1e-30 so that divergences stay finite
when a float32 teacher underflows to exactly 0 (see the docstring of :mod:`.gradients`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["PROB_FLOOR", "LOG_PROB_FLOOR", "floored_log", "vector"]

#: Floor of a probability inside a logarithm when the probability is 0 but its weight is not.
PROB_FLOOR = 1e-30
LOG_PROB_FLOOR = math.log(PROB_FLOOR)


def vector(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """``x`` as a 1-D float64 array (ValueError naming ``name`` otherwise)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector, got shape {arr.shape}")
    return arr


def floored_log(x: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(x, PROB_FLOOR))
