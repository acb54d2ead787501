"""Content addresses and seeds: every cache key of the engine, in one place.

- A tree's id hashes what produced it: question, student identity, prompt, rollout and sampling
  settings, seed and the target teachers (:func:`tree_settings`, :func:`tree_id`).
- Base rollouts get a seed of their own from only what shapes them (:func:`base_seed`), so trees
  that differ in node or continuation settings share their base rollouts.
- A record set's key hashes the settings its records depend on (:func:`records_key`); which
  settings those are is read from the config dataclasses' metadata (``affects="records"``), never
  listed by hand. A report's key adds the report-only settings (:func:`report_key`).

Plain data and hashing only; no models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .config import AnalysisConfig, PromptConfig, RolloutConfig, SamplingConfig, settings_affecting
from .data import Question
from .records import RECORD_SCHEMA_VERSION

__all__ = ["SCHEMA", "derive_seed", "digest", "tree_settings", "tree_id", "base_seed", "records_key", "report_key"]

SCHEMA = "gradalign-tree-v1"


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the run seed and a path of names: independent streams, stable across runs."""
    raw = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return int.from_bytes(raw[:8], "big") >> 1


def digest(value: Any, length: int = 32) -> str:
    """Hex sha256 of the canonical JSON of ``value`` (sorted keys)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def tree_settings(
    question: Question,
    student: Mapping[str, str],
    prompt: PromptConfig,
    rollouts: RolloutConfig,
    sampling: SamplingConfig,
    seed: int,
    targets: Mapping[str, Mapping[str, Any]],
    analysis: AnalysisConfig,
) -> dict[str, Any]:
    """Everything a tree depends on; stored with the tree and hashed into its id.

    ``student`` is the student's identity (model and tokenizer hashes, dtype, backend); ``targets``
    maps each target teacher to its spec and model hash. The analysis settings that steer node
    choice (the JSD beta of the priority, the teacher temperature) are part of it too.
    """
    return {
        "schema": SCHEMA,
        "question": question.to_dict(),
        "student": dict(student),
        "prompt": dataclasses.asdict(prompt),
        "rollouts": dataclasses.asdict(rollouts),
        "sampling": dataclasses.asdict(sampling),
        "seed": seed,
        "target_teachers": {name: dict(target) for name, target in targets.items()},
        "jsd_beta": analysis.jsd_beta,
        "teacher_temperature": analysis.teacher_temperature,
    }


def tree_id(settings: Mapping[str, Any]) -> str:
    """Content address of a tree (32 hex digits)."""
    return digest(settings)


def base_seed(settings: Mapping[str, Any]) -> int:
    """Seed of the base rollouts: only what shapes them (question, student, prompt, sampling, G, seed)."""
    shaping = {k: settings[k] for k in ("schema", "question", "student", "prompt", "sampling", "seed")}
    shaping["num_rollouts"] = settings["rollouts"]["num_rollouts"]
    if settings["rollouts"].get("screen_rollouts"):
        shaping["screen_rollouts"] = settings["rollouts"]["screen_rollouts"]
    return derive_seed("base", json.dumps(shaping, sort_keys=True, default=str))


def records_key(
    teacher_spec: Mapping[str, Any], teacher_model_hash: str, prompt: PromptConfig, analysis: AnalysisConfig
) -> str:
    """Key of one teacher's records on a tree: the record schema, the teacher and the record settings."""
    return digest(
        {
            "schema": RECORD_SCHEMA_VERSION,
            "analysis": settings_affecting(analysis, "records"),
            "teacher": dict(teacher_spec),
            "teacher_model": teacher_model_hash,
            "prompt": dataclasses.asdict(prompt),
        }
    )


def report_key(
    tree_ids: Sequence[str],
    teachers: Mapping[str, str],
    methods: Sequence[str],
    analysis: AnalysisConfig,
    seed: int,
    confidence: float,
) -> tuple[str, dict[str, Any]]:
    """(key, what it hashes) of a report: trees, the teachers' record keys, methods and report settings."""
    request = {
        "tree_ids": sorted(tree_ids),
        "teachers": sorted(teachers),
        "methods": list(methods),
        "records": dict(teachers),
        "analysis": {**settings_affecting(analysis, "records"), **settings_affecting(analysis, "report")},
        "seed": seed,
        "confidence": confidence,
    }
    return digest(request), request
