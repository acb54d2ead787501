"""Teachers: external models sharing the student's tokenizer, and self-distillation contexts.

A teacher turns (question, tree, rollout) into a prompt before the student's completion tokens.
A self-distillation teacher is the student's backend with a context (a correct demonstration,
correct and wrong demonstrations, a summary, or a user template); an external teacher is another
backend whose tokenizer must match the student's exactly (vocabulary, special tokens, chat
template), else :class:`TokenizerMismatchError` says what differs.

Knows prompts and backends; knows nothing of gradients, storage or gRPC.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from .config import PromptConfig, TeacherSpec
from .data import Question
from .errors import TokenizerMismatchError
from .judging import verifier_for
from .prompts import render_prompt
from .records import SkipReason
from .tree import RolloutTree

__all__ = ["check_tokenizer_compatibility", "TeacherContext", "Teacher", "DEFAULT_WORDING"]

DEFAULT_WORDING = {
    "correct_demo": "Here is a correct solution to the problem below:\n{solution}",
    "correct_and_wrong": (
        "Here is a correct solution to the problem below:\n{solution}\n\n"
        "Here is a wrong solution to the same problem (do not follow it):\n{wrong}"
    ),
    "summary": "Here is a summary of a correct solution to the problem below:\n{summary}",
}
SUMMARY_PROMPT = "Summarize the key steps of this solution in one or two sentences.\n\nSolution:\n{solution}"


def check_tokenizer_compatibility(student_tok, teacher_tok, teacher_name: str) -> None:
    """Refuse a teacher whose tokenizer differs from the student's; the message lists what differs."""
    problems = []
    sv, tv = student_tok.get_vocab(), teacher_tok.get_vocab()
    if sv != tv:
        only_s = sorted(set(sv) - set(tv))[:3]
        only_t = sorted(set(tv) - set(sv))[:3]
        moved = sorted(k for k in set(sv) & set(tv) if sv[k] != tv[k])[:3]
        problems.append(
            f"vocabulary ({len(sv)} vs {len(tv)} tokens; only in student: {only_s}, only in teacher: {only_t}, "
            f"different ids: {moved})"
        )
    for attr in ("eos_token_id", "bos_token_id", "pad_token_id", "unk_token_id"):
        a, b = getattr(student_tok, attr, None), getattr(teacher_tok, attr, None)
        if a != b:
            problems.append(f"{attr} ({a} vs {b})")
    st, tt = getattr(student_tok, "chat_template", None) or "", getattr(teacher_tok, "chat_template", None) or ""
    if st != tt:
        problems.append("chat template (the rendered prompts would differ)")
    if problems:
        raise TokenizerMismatchError(
            f"teacher {teacher_name!r} does not share the student's tokenizer: " + "; ".join(problems)
        )


@dataclass(frozen=True)
class TeacherContext:
    """The context text for a set of scored rollouts, where its demonstrations came from, or why there is none.

    ``demo_source`` and ``wrong_source`` are "dataset" or "rollout:<i>" (None when the context uses none).
    """

    text: str | None
    skip_reason: str | None = None
    demo_source: str | None = None
    wrong_source: str | None = None

    @property
    def key(self) -> tuple[str | None, str | None, str | None]:
        """What decides the text: equal keys give equal prompts (for grouping teacher passes)."""
        return (self.skip_reason, self.demo_source, self.wrong_source)


class Teacher:
    """One configured teacher: its backend, and how it builds its prompt for the rollouts it scores.

    Leave-one-out (docs/method.md): a demonstration is never one of the ``excluded`` rollouts, the
    base rollouts through the node being scored. When no other demonstration exists (and the data
    set has no verified solution), there is no context: ``teacher_context_unavailable``.
    """

    def __init__(self, spec: TeacherSpec, backend, prompt: PromptConfig, summarize: Callable[..., str] | None = None):
        self.spec = spec
        self.backend = backend
        self.prompt = prompt
        self._summarize = summarize  # (question_id, solution, cancel) -> summary, for the 'summary' context

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_self(self) -> bool:
        return self.spec.kind == "self"

    # ------------------------------------------------------------------ contexts
    def _demo(self, tree: RolloutTree, excluded: AbstractSet[int]) -> tuple[str | None, str | None]:
        """(solution text, its source): the dataset's verified solution or a correct rollout not excluded."""
        question = tree.question
        dataset = question.solution if _verified_solution(question) else None
        if self.spec.prefer_dataset_solution and dataset:
            return dataset, "dataset"
        pick = next((r for r in tree.rollouts if r.correct and r.index not in excluded), None)
        if pick is not None:
            return _strip_special(pick.text, self.backend.tokenizer), f"rollout:{pick.index}"
        return (dataset, "dataset") if dataset else (None, None)

    def _wrong(self, tree: RolloutTree, excluded: AbstractSet[int]) -> tuple[str | None, str | None]:
        pick = next((r for r in tree.rollouts if not r.correct and r.index not in excluded), None)
        if pick is None:
            return None, None
        return _strip_special(pick.text, self.backend.tokenizer), f"rollout:{pick.index}"

    def context(self, tree: RolloutTree, excluded: AbstractSet[int], cancel=None) -> TeacherContext:
        """The context for scoring a node whose base rollouts are ``excluded`` (None text for external teachers)."""
        if not self.is_self:
            return TeacherContext(text=None)
        question = tree.question
        kind = self.spec.context
        template = self.spec.template or DEFAULT_WORDING.get(kind, "")
        needed = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        values: dict[str, str | None] = {"question": question.question, "answer": question.answer}
        demo_source = wrong_source = None
        supplied = question.extra.get(self.spec.summary_field) if question.extra else None
        if "summary" in needed and supplied:
            values["summary"], demo_source = str(supplied), "dataset"
        if "solution" in needed or ("summary" in needed and not supplied):
            values["solution"], demo_source = self._demo(tree, excluded)
        if "summary" in needed and not supplied and values.get("solution") and self._summarize is not None:
            values["summary"] = self._summarize(question.id, values["solution"], cancel)
        if "wrong" in needed:
            values["wrong"], wrong_source = self._wrong(tree, excluded)
        missing = sorted(n for n in needed if not values.get(n))
        if missing:
            return TeacherContext(text=None, skip_reason=SkipReason.NO_CONTEXT)
        text = template.format(**{k: v or "" for k, v in values.items()})
        return TeacherContext(text=text, demo_source=demo_source, wrong_source=wrong_source)

    def prompt_ids(
        self, tree: RolloutTree, excluded: AbstractSet[int], cancel=None
    ) -> tuple[list[int] | None, TeacherContext]:
        """Token ids before the student's completion (None with the context's skip reason when there is none).

        ``cancel`` reaches the summarizer, the one context that may have to generate text.
        """
        ctx = self.context(tree, excluded, cancel)
        if ctx.skip_reason:
            return None, ctx
        ids = render_prompt(self.backend.tokenizer, tree.question, self.prompt, context=ctx.text)
        limit = getattr(self.backend, "context_length", None)
        # The teacher scores completions of up to max_new_tokens (and screening samples as many).
        longest = max(
            [len(r.tokens) for r in tree.rollouts] + [tree.settings.get("sampling", {}).get("max_new_tokens", 0)]
        )
        if limit is not None and len(ids) + longest > limit:
            return None, dataclasses.replace(ctx, skip_reason=SkipReason.CONTEXT_TOO_LONG)
        return ids, ctx


def _verified_solution(question: Question) -> bool:
    """Dataset solutions are not always right (25 of AddSub's end on another answer): check first."""
    if not question.solution:
        return False
    try:
        return verifier_for(question).check(question.solution, question).correct
    except ValueError:
        return False


def _strip_special(text: str, tokenizer) -> str:
    for tok in getattr(tokenizer, "all_special_tokens", []) or []:
        text = text.replace(tok, "")
    return text.strip()
