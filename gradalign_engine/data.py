"""Evaluation questions: the ``Question`` record and the JSONL loader.

A dataset is a JSONL file, one question per line: ``id``, ``question``, ``answer``, optional
``solution`` (a worked solution, usable as a demonstration), optional ``choices`` (multiple choice;
the answer is then a letter A, B, ...), ``verifier`` (how a completion is judged; default
``numeric``) and any further fields (e.g. ``summary``), kept verbatim in ``Question.extra``.

This module knows nothing of verifiers (it does not check that a verifier name is registered, nor
that a numeric answer parses), models, prompts or gRPC: it only reads, validates and writes records.
Errors are :class:`DatasetError` naming the file, line, field and bad value.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import GradalignError

__all__ = [
    "DatasetError",
    "Question",
    "load_questions",
    "bundled_dataset_path",
    "bundled_config_path",
    "bundled_dataset_names",
    "choice_letters",
]

_BUNDLED_DIR = Path(__file__).resolve().parent / "data"
_REQUIRED_FIELDS = ("id", "question", "answer")
_FIELD_NAMES = frozenset(("id", "question", "answer", "verifier", "choices", "solution"))
_MAX_CHOICES = len(string.ascii_uppercase)
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class DatasetError(GradalignError, ValueError):
    """A dataset file or question record is invalid; the message names where, the field and the value."""

    code = "INVALID_ARGUMENT"

    def __init__(
        self,
        field_name: str,
        value: Any,
        reason: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
    ):
        self.field_name = field_name
        self.value = value
        self.reason = reason
        self.path = str(path) if path is not None else None
        self.line = line
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(f"{where}{field_name}={_short(value)}: {reason}")


def _short(value: Any, limit: int = 120) -> str:
    """repr() of a value, truncated so that a whole essay never lands in an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def choice_letters(n: int) -> tuple[str, ...]:
    """The answer letters of an ``n``-way multiple-choice question: ('A', 'B', ...)."""
    return tuple(string.ascii_uppercase[:n])


def _require_text(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str) or value.strip() == "":
        kind = "a non-empty string or null" if allow_none else "a non-empty string"
        raise DatasetError(name, value, f"must be {kind}")


@dataclass(frozen=True)
class Question:
    """One evaluation question. Immutable and hashable (``extra`` is excluded from the hash)."""

    id: str
    question: str
    answer: str
    verifier: str = "numeric"
    choices: tuple[str, ...] = ()
    solution: str | None = None
    # Read-only view of every other JSON field (e.g. "summary"); compared, but not hashed, since
    # mappings are unhashable.
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _require_text("id", self.id)
        _require_text("question", self.question)
        _require_text("answer", self.answer)
        _require_text("verifier", self.verifier)
        _require_text("solution", self.solution, allow_none=True)

        choices = self.choices
        if isinstance(choices, (str, bytes)) or not isinstance(choices, (list, tuple)):
            raise DatasetError("choices", choices, "must be a list of strings")
        for i, choice in enumerate(choices):
            _require_text(f"choices[{i}]", choice)
        if choices:
            if not 2 <= len(choices) <= _MAX_CHOICES:
                raise DatasetError("choices", list(choices), f"must hold between 2 and {_MAX_CHOICES} options")
            letters = choice_letters(len(choices))
            if self.answer not in letters:
                raise DatasetError(
                    "answer",
                    self.answer,
                    f"with {len(choices)} choices the answer must be one of {', '.join(letters)}",
                )
        object.__setattr__(self, "choices", tuple(choices))

        if not isinstance(self.extra, Mapping):
            raise DatasetError("extra", self.extra, "must be a mapping of further JSON fields")
        for key in self.extra:
            if not isinstance(key, str):
                raise DatasetError("extra", key, "field names must be strings")
            if key in _FIELD_NAMES:
                raise DatasetError(f"extra.{key}", self.extra[key], f"{key!r} is a Question field, not an extra one")
        options = self.extra.get("verifier_options")
        if options is not None and not (isinstance(options, Mapping) and all(isinstance(k, str) for k in options)):
            raise DatasetError("extra.verifier_options", options, "must be an object of verifier options")
        # Copy, then freeze: the caller's dict must not be able to change a frozen Question.
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    def __reduce__(self) -> tuple:
        # mappingproxy cannot be pickled; rebuild through the constructor (which re-validates).
        return (
            type(self),
            (self.id, self.question, self.answer, self.verifier, self.choices, self.solution, dict(self.extra)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this question, in dataset field order; ``from_dict`` inverts it."""
        data: dict[str, Any] = {"id": self.id, "question": self.question}
        if self.choices:
            data["choices"] = list(self.choices)
        data["answer"] = self.answer
        if self.solution is not None:
            data["solution"] = self.solution
        data["verifier"] = self.verifier
        data.update(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Question:
        """Build a Question from a parsed JSON object; unknown fields go to ``extra``.

        A numeric ``answer`` (JSON 18 or 9.8 rather than "18") is accepted and kept as its text, since
        hand-written datasets often do that; every other field must have its documented type.
        """
        if not isinstance(data, Mapping):
            raise DatasetError("record", data, "must be a JSON object")
        for name in _REQUIRED_FIELDS:
            if name not in data:
                raise DatasetError(name, None, "required field is missing")
        answer = data["answer"]
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        choices = data.get("choices")
        if choices is None:
            choices = ()
        elif not isinstance(choices, list):  # JSON gives lists; a string here is a common mistake
            raise DatasetError("choices", choices, "must be a list of strings")
        verifier = data.get("verifier", "numeric")
        extra = {k: v for k, v in data.items() if k not in _FIELD_NAMES}
        return cls(
            id=data["id"],
            question=data["question"],
            answer=answer,
            verifier=verifier,
            choices=tuple(choices),
            solution=data.get("solution"),
            extra=extra,
        )


def load_questions(path: str | Path, limit: int | None = None) -> list[Question]:
    """Read a JSONL dataset; blank lines are skipped, ``limit`` keeps the first N questions.

    Raises DatasetError naming the file, the line number and the field for a missing file, bad JSON,
    a missing or invalid field, or an id already used on an earlier line. With ``limit`` the file is
    read only up to the limit, so later lines are not checked.
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise DatasetError("limit", limit, "must be a positive integer or None")
    path = Path(path)
    if not path.is_file():
        raise DatasetError("path", str(path), "dataset file not found")

    questions: list[Question] = []
    first_line_of: dict[str, int] = {}
    # utf-8-sig: tolerate a byte-order mark written by some editors.
    with path.open("r", encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            if limit is not None and len(questions) >= limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    "line", line.strip(), f"invalid JSON: {exc.msg} at column {exc.colno}", path=path, line=line_no
                ) from None
            try:
                question = Question.from_dict(record)
            except DatasetError as exc:
                raise DatasetError(exc.field_name, exc.value, exc.reason, path=path, line=line_no) from None
            if question.id in first_line_of:
                raise DatasetError(
                    "id",
                    question.id,
                    f"duplicate id (first used on line {first_line_of[question.id]})",
                    path=path,
                    line=line_no,
                )
            first_line_of[question.id] = line_no
            questions.append(question)
    return questions


def bundled_dataset_names() -> list[str]:
    """Names of the datasets shipped in the package (``gradalign_engine/data/*.jsonl``)."""
    return sorted(p.stem for p in _BUNDLED_DIR.glob("*.jsonl"))


def bundled_dataset_path(name: str = "demo") -> Path:
    """Path of a dataset shipped in the package; raises DatasetError naming unknown names."""
    # A plain name only: never let a request read an arbitrary file through "../".
    if not isinstance(name, str) or not _DATASET_NAME.fullmatch(name) or ".." in name:
        raise DatasetError("name", name, "must be a bundled dataset name such as 'demo'")
    path = _BUNDLED_DIR / f"{name}.jsonl"
    if not path.is_file():
        known = ", ".join(bundled_dataset_names()) or "(none)"
        raise DatasetError("name", name, f"no bundled dataset of that name; known: {known}")
    return path


def bundled_config_path(name: str) -> Path:
    """Path of a run or study config shipped in the package (``gradalign_engine/data/<name>.toml``)."""
    if not isinstance(name, str) or not _DATASET_NAME.fullmatch(name) or ".." in name:
        raise DatasetError("name", name, "must be a bundled config name such as 'study_smollm2'")
    path = _BUNDLED_DIR / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in _BUNDLED_DIR.glob("*.toml"))) or "(none)"
        raise DatasetError("name", name, f"no bundled config of that name; known: {known}")
    return path
