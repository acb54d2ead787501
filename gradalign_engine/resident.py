"""The resident models: the student, its teachers, what identifies them, and the caches they own.

Loads the student and every teacher once (an external teacher must share the student's tokenizer),
reports them (``list_models``, ``receipt``), and owns the two caches that generation fills:
summaries written for the 'summary' context and the verdicts of context screening. Both are bounded
(least recently used first) and deterministic, so an evicted entry is recomputed alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .backends import Backend, BranchRequest, CancelToken, load_backend
from .cache import LruCache
from .config import RunConfig, TeacherSpec
from .errors import NotFoundError
from .judging import Judge
from .prompts import render_user_message
from .score import screen_context
from .teachers import SUMMARY_PROMPT, Teacher, check_tokenizer_compatibility
from .tree import RolloutTree

__all__ = ["ModelEntry", "ResidentModels", "SUMMARY_CACHE_SIZE", "SCREEN_CACHE_SIZE"]

SUMMARY_CACHE_SIZE = 4096  # (author, question, solution) -> summary text
SCREEN_CACHE_SIZE = 16384  # (teacher, tree, prompt) -> does the teacher solve the question with it
_SUMMARY_TOKENS = 96


@dataclass(frozen=True)
class ModelEntry:
    """A resident model as ListModels reports it."""

    name: str
    role: str  # "student" or "teacher"
    kind: str  # "student", "self" or "external"
    context: str  # self-distillation context kind, "" otherwise
    backend: str
    dtype: str
    device: str
    tokenizer_hash: str
    model_hash: str


class ResidentModels:
    """The student and its teachers, loaded once."""

    def __init__(self, config: RunConfig, backends: Mapping[str, Backend] | None = None, on_loaded=None):
        backends = dict(backends or {})
        self.config = config
        loaded = on_loaded or (lambda role, name, seconds: None)
        started = time.perf_counter()
        self.student: Backend = backends.pop("student", None) or load_backend(config.student)
        loaded("student", self.student.info.name, time.perf_counter() - started)
        self.judge = Judge(self.student.tokenizer, self.student.eos_token_ids)
        self.summaries: LruCache[tuple[str, str, str], str] = LruCache(SUMMARY_CACHE_SIZE)
        self.screens: LruCache[tuple[str, str, str], bool] = LruCache(SCREEN_CACHE_SIZE)
        self.teachers: dict[str, Teacher] = {}
        for spec in config.teachers:
            if spec.kind == "self":
                backend = self.student
            else:
                started = time.perf_counter()
                backend = backends.pop(spec.name, None) or load_backend(spec.model)
                check_tokenizer_compatibility(self.student.tokenizer, backend.tokenizer, spec.name)
                loaded("teacher", spec.name, time.perf_counter() - started)
            self.teachers[spec.name] = Teacher(spec, backend, config.prompt, summarize=self._summarizer(spec))

    def teacher(self, name: str) -> Teacher:
        if name not in self.teachers:
            raise NotFoundError("teacher", name, sorted(self.teachers))
        return self.teachers[name]

    def targets(self, names: Sequence[str] | None) -> list[str]:
        """Target teachers, checked: every loaded teacher when ``names`` is None."""
        if names is None:
            return list(self.teachers)
        for name in names:
            self.teacher(name)
        return list(dict.fromkeys(names))

    def list_models(self) -> list[ModelEntry]:
        info = self.student.info
        out = [
            ModelEntry(
                info.name,
                "student",
                "student",
                "",
                info.backend,
                info.dtype,
                info.device,
                info.tokenizer_hash,
                info.model_hash,
            )
        ]
        for t in self.teachers.values():
            ti = t.backend.info
            out.append(
                ModelEntry(
                    t.name,
                    "teacher",
                    t.spec.kind,
                    t.spec.context if t.is_self else "",
                    ti.backend,
                    ti.dtype,
                    ti.device,
                    ti.tokenizer_hash,
                    ti.model_hash,
                )
            )
        return out

    def receipt(self) -> dict:
        """Model and tokenizer hashes, dtype, backend, versions and every setting."""
        import torch
        import transformers

        from . import __version__

        return {
            "gradalign": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "student": dataclasses.asdict(self.student.info),
            "teachers": {
                n: {"spec": dataclasses.asdict(t.spec), "model": dataclasses.asdict(t.backend.info)}
                for n, t in self.teachers.items()
            },
            "config": self.config.to_dict(),
        }

    def screen(self, teacher: Teacher, tree: RolloutTree, prompt: list[int], cancel: CancelToken | None) -> bool:
        """Whether the teacher, answering greedily with its context, solves the question (cached)."""

        def verify(tr: RolloutTree, tokens, tokenizer) -> bool:
            return self.judge(tr.question, tokens, tr.settings["sampling"]["max_new_tokens"])[0].correct

        return screen_context(teacher, tree, prompt, cancel, verify, self.screens)

    def _summarizer(self, spec: TeacherSpec):
        def summarize(question_id: str, solution: str, cancel: CancelToken | None) -> str:
            author = spec.summarizer
            backend = self.student if author == "student" else self.teachers[author].backend
            key = (author, question_id, hashlib.sha256(solution.encode()).hexdigest())

            def write() -> str:
                prompt = render_user_message(
                    backend.tokenizer, SUMMARY_PROMPT.format(solution=solution), self.config.prompt
                )
                request = BranchRequest(prefix=tuple(prompt), n=1, max_new_tokens=_SUMMARY_TOKENS, seed=0)
                out = backend.generate([request], temperature=0.0, cancel=cancel)
                return backend.tokenizer.decode(out[0][0], skip_special_tokens=True).strip()

            return self.summaries.get_or_compute(key, write)

        return summarize

    def close(self) -> None:
        seen = set()
        for backend in [self.student] + [t.backend for t in self.teachers.values()]:
            if id(backend) not in seen:
                seen.add(id(backend))
                backend.close()
