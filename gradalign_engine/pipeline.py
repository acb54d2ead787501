"""The engine: the façade the CLI, the study and the service drive.

``Engine.build_tree`` runs method.md steps 1-6 for one question (:mod:`.build`, :mod:`.adaptive`);
``Engine.score_tree`` turns a tree into per-node :class:`AlignmentRecord` s for any teachers and
methods (:mod:`.score`). The models, their identities and the caches they own are in
:mod:`.resident`; every content address and seed is in :mod:`.identity`. Cancellation is an explicit
argument of each call.

The engine works on token ids through a backend; it never sees protobuf, storage or threads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from . import identity
from .adaptive import spend_adaptive_budget
from .backends import Backend, CancelToken
from .build import ProgressFn, TreeBuilder, depth_windows
from .config import AnalysisConfig, ConfigError, RolloutConfig, RunConfig, SamplingConfig, canonical_method
from .cost import CostEstimate
from .data import Question
from .errors import PreconditionError
from .identity import derive_seed
from .prompts import render_prompt
from .records import AlignmentRecord
from .resident import ModelEntry, ResidentModels
from .score import TreeScorer
from .tree import RolloutTree
from .verifiers import VerifyResult

__all__ = ["Engine", "ModelEntry", "derive_seed", "depth_windows", "ProgressFn"]


class Engine:
    """Student and teachers resident in memory; builds trees and scores teachers."""

    def __init__(
        self,
        config: RunConfig,
        *,
        backends: Mapping[str, Backend] | None = None,
        on_loaded: Callable[[str, str, float], None] | None = None,
    ):
        """Load the student and every teacher; ``on_loaded(role, name, seconds)`` after each model."""
        self.config = config
        self.models = ResidentModels(config, backends, on_loaded=on_loaded)
        self.student, self.teachers = self.models.student, self.models.teachers
        self.builder = TreeBuilder(self.student, self.teachers, config.analysis, self.models.judge, self.models.screen)

    def list_models(self) -> list[ModelEntry]:
        return self.models.list_models()

    def receipt(self) -> dict:
        """Model and tokenizer hashes, dtype, backend, versions and every setting of this engine."""
        return self.models.receipt()

    def close(self) -> None:
        self.models.close()

    def verify(self, question: Question, tokens: Sequence[int], max_new_tokens: int | None = None) -> VerifyResult:
        """The verifier's verdict on a completion of the student's (token ids), sampled up to ``max_new_tokens``."""
        limit = self.config.sampling.max_new_tokens if max_new_tokens is None else max_new_tokens
        return self.models.judge(question, tokens, limit)[0]

    # ------------------------------------------------------------------ cache keys
    def tree_settings(
        self,
        question: Question,
        rollouts: RolloutConfig | None = None,
        sampling: SamplingConfig | None = None,
        seed: int | None = None,
        target_teachers: Sequence[str] | None = None,
    ) -> dict:
        """Everything a tree depends on (:func:`identity.tree_settings`), defaults filled from the config."""
        info = self.student.info
        student = {
            "model_hash": info.model_hash,
            "tokenizer_hash": info.tokenizer_hash,
            "dtype": info.dtype,
            "backend": info.backend,
        }
        targets = {
            n: {
                "spec": dataclasses.asdict(self.teachers[n].spec),
                "model_hash": self.teachers[n].backend.info.model_hash,
            }
            for n in self.models.targets(target_teachers)
        }
        return identity.tree_settings(
            question,
            student,
            self.config.prompt,
            rollouts or self.config.rollouts,
            sampling or self.config.sampling,
            self.config.seed if seed is None else seed,
            targets,
            self.config.analysis,
        )

    def tree_id(
        self,
        question: Question,
        rollouts: RolloutConfig | None = None,
        sampling: SamplingConfig | None = None,
        seed: int | None = None,
        target_teachers: Sequence[str] | None = None,
    ) -> str:
        """Content address of a tree: question, student, prompt, settings, seed and target teachers."""
        return identity.tree_id(self.tree_settings(question, rollouts, sampling, seed, target_teachers))

    def records_key(self, teacher: str, analysis: AnalysisConfig | None = None) -> str:
        """Key of one teacher's records on any tree, for these analysis settings."""
        spec = self.models.teacher(teacher)
        return identity.records_key(
            dataclasses.asdict(spec.spec),
            spec.backend.info.model_hash,
            self.config.prompt,
            analysis or self.config.analysis,
        )

    # ------------------------------------------------------------------ the two operations
    def estimate(
        self,
        questions: Sequence[Question],
        *,
        rollouts: RolloutConfig | None = None,
        sampling: SamplingConfig | None = None,
        target_teachers: Sequence[str] | None = None,
        teachers: Sequence[str] | None = None,
    ) -> CostEstimate:
        """Expected tokens and time of building and scoring ``questions``, from a calibration on this student."""
        from . import cost

        if not questions:
            raise ConfigError("questions", [], "name at least one question")
        sampling = sampling or self.config.sampling
        rollouts = rollouts or self.config.rollouts
        targets = self.models.targets(target_teachers)
        scored = list(teachers) if teachers is not None else list(self.teachers)
        calibration = cost.calibrate(self.student, questions[0], self.config.prompt, sampling, seed=self.config.seed)
        prompts = [len(render_prompt(self.student.tokenizer, q, self.config.prompt)) for q in questions]
        return cost.estimate(
            questions,
            rollouts,
            sampling,
            calibration,
            target_teachers=len(targets),
            scored_teachers=len(scored),
            prompt_tokens=prompts,
        )

    def check_question(
        self, question: Question, sampling: SamplingConfig | None = None, target_teachers: Sequence[str] | None = None
    ) -> None:
        """Refuse, before any lookup or sampling, a question this engine cannot build a tree for.

        ConfigError for an unusable verifier, its options or reference answer, and for a prompt that
        with ``max_new_tokens`` does not fit the student's context (or an external target teacher's).
        """
        self.models.judge.validate(question)
        limit_new = (sampling or self.config.sampling).max_new_tokens
        prompt = len(render_prompt(self.student.tokenizer, question, self.config.prompt))
        models = [("student", self.student)] + [
            (f"teacher {name!r}", self.teachers[name].backend)
            for name in self.models.targets(target_teachers)
            if not self.teachers[name].is_self
        ]
        for who, backend in models:
            limit = backend.context_length
            if limit is not None and prompt + limit_new > limit:
                raise ConfigError(
                    "question.text",
                    f"{prompt} prompt tokens",
                    f"the prompt plus max_new_tokens ({limit_new}) is {prompt + limit_new} tokens, more than the "
                    f"{who}'s context of {limit} tokens",
                )

    def build_tree(
        self,
        question: Question,
        *,
        rollouts: RolloutConfig | None = None,
        sampling: SamplingConfig | None = None,
        seed: int | None = None,
        target_teachers: Sequence[str] | None = None,
        cancel: CancelToken | None = None,
        progress: ProgressFn | None = None,
    ) -> RolloutTree:
        """Sample, choose analysis nodes and run targeted continuations for one question."""
        self.check_question(question, sampling, target_teachers)
        targets = self.models.targets(target_teachers)
        settings = self.tree_settings(question, rollouts, sampling, seed, targets)
        prompt = render_prompt(self.student.tokenizer, question, self.config.prompt)
        tree = RolloutTree(
            tree_id=identity.tree_id(settings),
            question=question,
            prompt_ids=list(prompt),
            rollouts=[],
            settings=settings,
        )
        rcfg, scfg = RolloutConfig(**settings["rollouts"]), SamplingConfig(**settings["sampling"])

        def adapt(active, node_rows):
            run = lambda work: self.builder.continue_nodes(  # noqa: E731
                tree, work, scfg, settings["seed"], cancel, adaptive=True, report=progress
            )
            spend_adaptive_budget(
                tree, active, rcfg, scfg, targets, node_rows, self.config.analysis, set(self.student.eos_token_ids), run
            )

        self.builder.build(tree, targets, cancel, progress, adapt=adapt)
        return tree

    def score_tree(
        self,
        tree: RolloutTree,
        teachers: Sequence[str],
        methods: Sequence[str],
        *,
        analysis: AnalysisConfig | None = None,
        cancel: CancelToken | None = None,
        progress: ProgressFn | None = None,
    ) -> list[AlignmentRecord]:
        """Per-node alignment records of each teacher x method on ``tree``."""
        acfg = analysis or self.config.analysis
        methods = [canonical_method(m) for m in methods] or list(acfg.methods)
        if not teachers:
            raise ConfigError("teachers", list(teachers), "name at least one teacher")
        for name in teachers:
            self.models.teacher(name)
        if tree.settings.get("student", {}).get("model_hash") not in (None, self.student.info.model_hash):
            raise PreconditionError(f"tree {tree.tree_id} was built by a different student model than the one loaded")
        scorer = TreeScorer(self.student, self.teachers, acfg, self.models.screen, cancel)
        return scorer.records(tree, list(teachers), methods, progress)
