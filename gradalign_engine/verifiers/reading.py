"""How a careful grader reads a completion: which parts count, and how commitments combine.

The rules are written down in tests/verifier_labels/CONVENTION.md (G1-G6); this module holds the
parts every verifier shares:
- :func:`readable_part` drops what is not an answer to the question asked: an invented follow-up
  question and everything after it, an echo of the instruction, reported speech;
- :class:`Commitment` is one place where the completion selects an answer;
- :func:`decide` combines them: one answer, or none with a reason (no answer, several answers,
  letter and text disagree); an explicit correction ("Actually, ...") replaces what came before.

Pure functions of text; no models, no questions' reference answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "Commitment",
    "decide",
    "discounted",
    "readable_part",
    "normalize_text",
    "words",
    "NO_ANSWER",
    "corrected_between",
]

NO_ANSWER = "no answer"

# An invented follow-up: a line that starts a new question, exercise or turn of dialogue.
_FOLLOW_UP = re.compile(
    r"(?im)^[ \t>*#_-]*(?:question|q\d*|problem|exercise|example|practice|now\s+try|try\s+this|next\s+question|"
    r"new\s+question|another\s+question|user|human|student)\s*\d*\s*[:.)]"
)
# The instruction echoed back: 'end with "The answer is 11."' is not an answer.
_ECHO = re.compile(
    r"(?i)\b(?:end|ending|finish|finishing|conclude|concluding)\s+with\s*[:,]?\s*[\"“'‘]?\s*the\s+answer\s+is\b[^\"”'’\n]*[\"”'’]?"
)
_INSTRUCTION = re.compile(
    r"(?i)\b(?:solve\s+it\s+briefly|answer\s+with\s+the\s+letter\s+of\s+the\s+correct\s+choice|answer\s+yes\s+or\s+no)\b[^\n]*"
)
# Reported speech: 'you replied: "The answer is yes."' is someone else's answer.
_REPORTED = re.compile(
    r"(?i)\b(?:replied|replies|reply|said|says|say|asked|asks|told|tells|wrote|writes|answered|answers|marked|"
    r"respond|responds|responded|with\s+either|either)\b[ \t:,]*[\"“]([^\"”\n]*)[\"”]"
)
# Negated speech: 'I don't respond with either "..." or "The answer is no."' commits to nothing it quotes.
_NEGATED_SPEECH = re.compile(
    r"(?i)\b(?:don't|do\s+not|won't|will\s+not|never|cannot|can't)\s+(?:respond|say|answer|reply|write)\b[^.!?\n]*"
)
# The instruction's placeholder echoed: "The answer is N." / "The answer is X." names nothing.
_PLACEHOLDER = re.compile(r"(?i)\bthe\s+answer\s+is\s*[:\"“'*]*\s*[NX]\b[\s\"”'*]*[.!]?")
# An answer called wrong, or someone else's: "The answer "yes" is misleading", "the previous answer was 7".
_REJECTED = re.compile(
    r"(?i)[\s\"”'*.,)]*(?:is|was|would\s+be|seems)\s+(?:misleading|wrong|incorrect|not\s+correct|not\s+right|false|a\s+lie)"
)
_DISCOUNTED = re.compile(
    r"(?i)\b(?:your|previous|other|another|possible|alternative|wrong|incorrect|original|sample|example)\b"
    r"(?:[ \t]+[\w-]+){0,3}?[ \t]+(?:answer|choice|option)\b"
)
_STOPWORDS = frozenset(
    "the and for are was were that this with from have has had does did what which when where who whom how many much "
    "you your they them their there here its his her she him can could would should will shall been being than then "
    "into onto about also any all not yes some more most such each only just very".split()
)
_CORRECTION = re.compile(
    r"(?i)\b(?:actually|correction|wait|sorry|i\s+mean|on\s+second\s+thought|let\s+me\s+correct|i\s+was\s+wrong|"
    r"i\s+made\s+a\s+mistake|rather|instead)\b"
)
_WRAPPERS = "*_`\"'“”‘’"
_TRAILING_PUNCTUATION = ".,;:!?"


@dataclass(frozen=True)
class Commitment:
    """The completion selects ``value`` at ``start`` (or names two answers at once: ``conflict``)."""

    value: str | None
    start: int
    end: int
    conflict: str | None = None


def readable_part(text: str, question: str | None = None) -> str:
    """The completion without what answers something else: echoes of the instruction, reported
    speech, and everything from an invented follow-up question on (blanked or cut, offsets kept).

    With ``question`` (the question's text), a question the completion asks that shares little
    with it is an invented one too ("Want to know how to play poker? The answer is yes.").
    """
    for pattern in (_ECHO, _INSTRUCTION, _PLACEHOLDER):
        text = _blank(text, pattern)
    text = _blank(text, _REPORTED, group=1)
    for match in _NEGATED_SPEECH.finditer(text):
        quoted = re.sub(r"[\"“][^\"”]*[\"”]?", lambda m: " " * len(m.group(0)), match.group(0))
        text = text[: match.start()] + quoted + text[match.end() :]
    cut = len(text)
    for match in _FOLLOW_UP.finditer(text):
        if text[: match.start()].strip():  # a question restated at the very start is not a follow-up
            cut = match.start()
            break
    if question is not None:
        cut = min(cut, _invented_question(text, question))
    return text[:cut]


def _content(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]{3,}", text.casefold()) if w not in _STOPWORDS}


def _invented_question(text: str, question: str) -> int:
    """Offset of the first question the completion asks that is not (mostly) the one asked."""
    asked = _content(question)
    if len(asked) < 2:
        return len(text)  # too little to tell a different question from this one
    for match in re.finditer(r"[^.!?\n]*\?", text):
        own = _content(re.split(r"[:\"“]", match.group(0))[-1])  # 'tries to answer: "Does the dealer ...?"'
        if re.search(r"[\"“]", match.group(0)):
            continue  # a question quoted in a sentence is being talked about, not asked
        if len(own) >= 2 and len(own & asked) / len(own) < 0.4:
            return match.start() + len(match.group(0)) - len(match.group(0).lstrip())
    return len(text)


def _blank(text: str, pattern: re.Pattern[str], group: int = 0) -> str:
    """``text`` with each match's ``group`` replaced by spaces (offsets stay valid)."""
    chars = list(text)
    for match in pattern.finditer(text):
        chars[match.start(group) : match.end(group)] = " " * (match.end(group) - match.start(group))
    return "".join(chars)


def corrected_between(text: str, start: int, end: int) -> bool:
    """Whether an explicit correction marker stands between two commitments."""
    return bool(_CORRECTION.search(text, start, end))


def discounted(text: str, start: int, end: int) -> bool:
    """Whether an answer phrase is someone else's or a rejected one ("the previous answer was 7")."""
    return bool(_DISCOUNTED.search(text, max(0, start - 40), end)) or bool(_REJECTED.match(text, end))


def decide(text: str, commitments: Iterable[Commitment]) -> tuple[str | None, str | None]:
    """(answer, None) when the commitments name one answer, else (None, reason)."""
    kept: list[Commitment] = []
    for c in sorted(commitments, key=lambda c: c.start):
        if _REJECTED.match(text, c.end):
            continue  # "The answer "The answer is yes" is misleading"
        if kept and c.value != kept[-1].value and corrected_between(text, kept[-1].end, c.start):
            kept = []  # an explicit correction replaces everything before it
        kept.append(c)
    if not kept:
        return None, NO_ANSWER
    conflicts = [c.conflict for c in kept if c.conflict]
    if conflicts:
        return None, conflicts[0]
    values = list(dict.fromkeys(c.value for c in kept))
    if len(values) > 1:
        return None, "several answers: " + ", ".join(str(v) for v in values)
    return values[0], None


def normalize_text(text: str) -> str:
    """Normalise for exact comparison: casefold, collapse whitespace, drop trailing punctuation
    and wrapping markup (``**Paris**.`` and ``paris`` compare equal)."""
    text = " ".join(text.casefold().split())
    previous = None
    while text != previous:  # "**Paris.**." needs several passes
        previous = text
        text = text.rstrip(_TRAILING_PUNCTUATION).strip(_WRAPPERS).strip()
    return text


def words(text: str) -> str:
    """Letters and digits only, casefolded, single spaces: how option texts are compared."""
    return " ".join(re.findall(r"[^\W_]+", text.casefold()))
