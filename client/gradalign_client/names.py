"""Names both sides of the wire must agree on: the distillation methods and their aliases.

The engine validates settings with these (``gradalign_engine.config_method``) and the light client
checks a command line with them before any call, so a typo fails in milliseconds, not after a tree.
"""

from __future__ import annotations

__all__ = ["METHODS", "METHOD_ALIASES", "canonical_method_name"]

#: Distillation methods whose update is compared with the ideal one.
METHODS = ("forward_kl", "reverse_kl", "jsd", "single_sample", "minillm")
METHOD_ALIASES = {"fkl": "forward_kl", "rkl": "reverse_kl", "gkd": "jsd", "tinker": "single_sample"}


def canonical_method_name(name: str) -> str | None:
    """The canonical name of a method or alias (case and spaces ignored); None when unknown."""
    key = name.strip().lower()
    key = METHOD_ALIASES.get(key, key)
    return key if key in METHODS else None
