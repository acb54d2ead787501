"""Typed configuration for every stage of a gradalign run: the run as a whole, and how it is read.

Each dataclass documents every field once (:func:`~.config_fields.setting`); that text is the single
source for the TOML reference, the CLI help and error messages, and each field says what it affects
(:data:`~.config_fields.AFFECTS`). ``__post_init__`` validates ranges and raises :class:`ConfigError`
naming the field and the bad value. The tables live in :mod:`.config_models` (models and teachers) and
:mod:`.config_method` (sampling, prompt, rollouts, analysis); this module re-exports them.

This package knows nothing of models, tensors, gRPC or storage: it is plain data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config_fields import AFFECTS, check, setting, settings_affecting
from .config_method import METHODS, AnalysisConfig, PromptConfig, RolloutConfig, SamplingConfig, canonical_method
from .config_models import TEACHER_CONTEXTS, ModelSpec, TeacherSpec
from .errors import ConfigError

__all__ = [
    "ConfigError",
    "ModelSpec",
    "SamplingConfig",
    "PromptConfig",
    "RolloutConfig",
    "AnalysisConfig",
    "TeacherSpec",
    "RunConfig",
    "METHODS",
    "TEACHER_CONTEXTS",
    "AFFECTS",
    "canonical_method",
    "settings_affecting",
    "run_config_from_dict",
    "load_run_config",
    "help_table",
]


@dataclass(frozen=True)
class RunConfig:
    """Everything one analysis needs: student, teachers and every setting. Recorded in each receipt."""

    student: ModelSpec = setting(help="The student model ([student] table).", affects="model", factory=ModelSpec)
    teachers: tuple[TeacherSpec, ...] = setting((), "Candidate teachers ([[teachers]] tables).", affects="teacher")
    sampling: SamplingConfig = setting(
        help="Student sampling ([sampling] table).", affects="tree", factory=SamplingConfig
    )
    prompt: PromptConfig = setting(help="Prompt construction ([prompt] table).", affects="tree", factory=PromptConfig)
    rollouts: RolloutConfig = setting(
        help="Targeted rollouts ([rollouts] table).", affects="tree", factory=RolloutConfig
    )
    analysis: AnalysisConfig = setting(
        help="Gradients and statistics ([analysis] table).", affects="records", factory=AnalysisConfig
    )
    seed: int = setting(0, "Seed of every random choice; same config and seed give the same records.", affects="tree")

    def __post_init__(self) -> None:
        seed_ok = isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**63
        check(seed_ok, "seed", self.seed, "must be an integer in [0, 2^63)")
        names = [t.name for t in self.teachers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        check(not dupes, "teachers.name", dupes, "teacher names must be unique")
        for t in self.teachers:
            if t.kind == "self" and t.context == "summary" and t.summarizer != "student":
                reason = "must be 'student' or the name of another teacher"
                check(t.summarizer in names, f"teachers[{t.name}].summarizer", t.summarizer, reason)

    def teacher(self, name: str) -> TeacherSpec:
        for t in self.teachers:
            if t.name == name:
                return t
        raise KeyError(name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls: type, data: Mapping[str, Any] | None, where: str) -> Any:
    """Construct dataclass ``cls`` from a mapping, refusing unknown keys by name."""
    data = dict(data or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}" if where else unknown[0],
            data[unknown[0]],
            f"unknown setting; known: {', '.join(sorted(known))}",
        )
    if "methods" in data and isinstance(data["methods"], list):
        data["methods"] = tuple(data["methods"])
    try:
        return cls(**data)
    except TypeError as exc:  # missing required field
        raise ConfigError(where or cls.__name__, data, str(exc)) from None


def run_config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Build a validated RunConfig from the parsed TOML mapping."""
    data = dict(data)
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(unknown[0], data[unknown[0]], f"unknown top-level setting; known: {', '.join(sorted(known))}")
    teachers = []
    for i, t in enumerate(data.get("teachers", []) or []):
        if not isinstance(t, Mapping):
            raise ConfigError(f"teachers[{i}]", t, "each teacher must be a table")
        t = dict(t)
        if "model" in t:
            t["model"] = _build(
                ModelSpec,
                t["model"] if isinstance(t["model"], Mapping) else {"model": t["model"]},
                f"teachers[{i}].model",
            )
        teachers.append(_build(TeacherSpec, t, f"teachers[{i}]"))
    return RunConfig(
        student=_build(ModelSpec, data.get("student"), "student"),
        teachers=tuple(teachers),
        sampling=_build(SamplingConfig, data.get("sampling"), "sampling"),
        prompt=_build(PromptConfig, data.get("prompt"), "prompt"),
        rollouts=_build(RolloutConfig, data.get("rollouts"), "rollouts"),
        analysis=_build(AnalysisConfig, data.get("analysis"), "analysis"),
        seed=data.get("seed", 0),
    )


def load_run_config(path: str | Path) -> RunConfig:
    """Read a TOML file into a validated RunConfig."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", str(path), "file not found")
    with path.open("rb") as fh:
        try:
            data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", str(path), f"invalid TOML: {exc}") from None
    return run_config_from_dict(data)


def help_table(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, help) for each field of a config dataclass: the one source of the docs."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = "(table)"
        else:
            default = "(required)"
        rows.append((f.name, default, f.metadata.get("help", "")))
    return rows
