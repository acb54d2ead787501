"""The yes/no verifier: the answer a completion commits to, read as CONVENTION.md says (G1-G6, Y1-Y4).

Commitments are answer phrases ("The answer is no", "The answer to this question is yes") and a
reply that opens with Yes/No (or True/False as the whole first sentence). "No" inside other phrases
("no one", "no matter", "there is no") is not an answer; yes and no together are no answer unless
the later one corrects the earlier ("Actually, the answer is yes").
"""

from __future__ import annotations

import re
from typing import Any

from ..data import Question
from .base import VerifierError, VerifyResult, reject_unknown_options, require_str
from .reading import Commitment, decide, readable_part

__all__ = ["YesNoVerifier", "YES_NO"]

YES_NO = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}
_HEDGES = (
    r"(?:simply|indeed|definitely|clearly|probably|likely|most\s+likely|possibly|certainly|surely|obviously|"
    r"absolutely|a)"
)
_PHRASE = re.compile(
    r"(?i)\b(?:the\s+)?(?:(?:correct|right|short|final|simple|real|true)\s+)?answer"
    r"(?:\s+(?:to\s+(?:this|the|your|that)\s+question|here))?(?:\s+" + _HEDGES + r")?"
    r"\s*(?:would\s+be|will\s+be|should\s+be|must\s+be|is|was|=|:)\s*"
    r"(?:" + _HEDGES + r"\s+)?[\s\"'“‘*_(\[:]*(yes|no|true|false)\b"
)
# "So yes", "Therefore, no": a conclusion that opens with the answer.
_CONCLUDES = re.compile(
    r"(?im)(?:^|(?<=[.!?;]\s))[\s*_]*(?:so|therefore|thus|hence|in\s+short|in\s+conclusion)\s*,?\s*(yes|no)\b"
)
# A whole first sentence of at most three words that ends in the answer: "Definitely no.", "Pawn : yes".
_SHORT = re.compile(r"(?i)^[\s*_>\"'“‘]*(?:[\w'-]+\s*[:,]?\s*){0,2}(yes|no)\s*[.!]*[\"”'’*_]*\s*(?:$|\n)")
_OPENING = re.compile(r"(?i)^[\s*_>\"'“‘(\[-]*(yes|no)\b(?!\s+(?:one|longer|matter|doubt|idea|way|need|problem)\b)")
_OPENING_TRUTH = re.compile(r"(?i)^[\s*_>\"'“‘(\[-]*(true|false)\s*[.!]?\s*(?:$|\n)")


_NEGATION = re.compile(r"(?i)\b(?:not|never|no\s+longer|neither|nor|cannot)\b|n't\b|\bno\s+(?!doubt\b|matter\b)[a-z]+")
_DIFFERENT = re.compile(r"(?i)\b(?:differ|differs|different|distinct|separate|unrelated)\b")
_SAME = re.compile(r"(?i)\b(?:same|identical|equivalent)\b")
_AFFIRMED = re.compile(r"(?i)\bindeed\b")
_PRONOUN = re.compile(r"(?i)\s*(?:it|they|this|that|these|those)\b")
_STOP = frozenset(
    "the and for are was were that this with from have has had does did what which when where who how many "
    "much you your "
    "they them their there here its his her she him can could would should will been being than then into "
    "about also any all "
    "not yes some more most such each only just very is be an a of in on to at by or as it do".split()
)


def _stems(text: str) -> set[str]:
    out = set()
    for word in re.findall(r"[a-z]{3,}", text.casefold()):
        if word in _STOP:
            continue
        out.add(
            word[:-3] + "y"
            if word.endswith("ies")
            else word[:-1]
            if word.endswith("s") and not word.endswith("ss")
            else word
        )
    return out


def _declarations(text: str, question: str) -> list[Commitment]:
    """Y3: sentences that plainly assert or deny the question's proposition without saying yes or no
    ("The georgia aquarium doesn't currently have any whale sharks.")."""
    asked = _stems(question)
    if len(asked) < 2:
        return []
    same_question, flip = bool(_SAME.search(question)), bool(_NEGATION.search(question))
    out = []
    for k, match in enumerate(re.finditer(r"[^.!?\n]+[.!]?", text)):
        clause = re.split(r"(?i),\s+(?:and|while)\b|,?\s+(?:but|although|though)\b|;", match.group(0))[0]
        conclusion = re.match(r"(?i)\s*(?:so|therefore|thus|hence|in\s+conclusion)\b", clause)
        if (k > 0 and not conclusion) or clause.rstrip().endswith("?") or len(clause.split()) < 3:
            continue  # only the reply's first sentence, or one that concludes
        if re.search(r"(?i)\b(?:answer|question)\b", clause):
            continue  # "There is no accepted answer ...": about answering, not the proposition
        own = _stems(clause)
        if _PRONOUN.match(clause) and len(clause.split()) <= 8:
            ratio = 1.0 if own and own <= asked else 0.0  # "It's not the same.": the subject is the question's
        else:
            ratio = len(own & asked) / len(asked)
        negative = bool(_NEGATION.search(clause)) or (same_question and bool(_DIFFERENT.search(clause)))
        if negative and ratio >= 0.5:
            value = "yes" if flip else "no"
        elif not negative and ratio >= 0.5 and (_SAME.search(clause) if same_question else _AFFIRMED.search(clause)):
            value = "no" if flip else "yes"
        else:
            continue
        out.append(Commitment(value, match.start(), match.end()))
    return out


class YesNoVerifier:
    """Yes/no questions: correct when the completion commits to the reference ("true" = yes, "false" = no)."""

    name = "yesno"

    def __init__(self, **options: Any):
        reject_unknown_options(self.name, options)

    def validate(self, question: Question) -> None:
        """Refuse a question whose reference answer is not yes/no/true/false (before any sampling)."""
        if YES_NO.get(question.answer.strip().lower()) is None:
            raise VerifierError(
                "answer", question.answer, f"question {question.id!r}: the yesno verifier needs yes, no, true or false"
            )

    @staticmethod
    def read(completion_text: str, question: str | None = None) -> tuple[str | None, str | None]:
        """("yes" | "no", None) or (None, reason); with the question's text, plain declaratives count too."""
        text = readable_part(completion_text, question)
        found = [Commitment(YES_NO[m.group(1).lower()], m.start(), m.end()) for m in _PHRASE.finditer(text)]
        found += [Commitment(m.group(1).lower(), m.start(), m.end()) for m in _CONCLUDES.finditer(text)]
        for pattern in (_OPENING, _OPENING_TRUTH, _SHORT):
            opening = pattern.match(text)
            if opening:
                found.append(Commitment(YES_NO[opening.group(1).lower()], opening.start(1), opening.end(1)))
        if question is not None and not found:
            found = _declarations(text, question)  # Y3: only when the completion says neither yes nor no
        return decide(text, found)

    @classmethod
    def extract(cls, completion_text: str) -> str | None:
        """ "yes", "no" or None."""
        return cls.read(completion_text)[0]

    def check(self, completion_text: str, question: Question, *, truncated: bool = False) -> VerifyResult:
        require_str("completion_text", completion_text)
        self.validate(question)
        answer, reason = self.read(completion_text, question.question)
        return VerifyResult(answer == YES_NO[question.answer.strip().lower()], answer, reason)
