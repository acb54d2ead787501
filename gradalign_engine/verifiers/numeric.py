"""The numeric verifier: the number a completion commits to as its final answer (CONVENTION.md N1-N4).

Commitments, in the order a careful grader looks for them: ``\\boxed{N}``; an answer phrase ("The
answer is N", "Answer: N", "#### N"; with an equation, its result; "The answer is 10x = 20" names no
number); "N is the answer"; a reply that opens with a number ("12", "One", "10 cats"). Only when
there is none, a concluding statement: the completion's last complete sentence stating a result
("So, there are 4 crayons left.", "The total is 5 + 3 = 8 apples."). Numbers compare by value:
"1,000" = 1000, "9.80" = 9.8, "$5" = 5, "50%" = 50, "3/4" = 0.75, "four" = 4.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..data import Question
from .base import VerifierError, VerifyResult, reject_unknown_options, require_str
from .reading import Commitment, decide, discounted, readable_part

__all__ = ["NumericVerifier", "extract_number", "number_value"]

# One number: optional minus, digits with optional thousands commas and decimals, or ".5", then an
# optional "/den" making a simple fraction. The look-behind stops "16-3" yielding "-3" and "x2" "2";
# a number followed by ":digit" is a time or a ratio, not an answer.
_NUMBER = re.compile(
    r"(?<![A-Za-z0-9.])"
    r"-?(?:(?:\d+(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:/\d+(?!\d|\.\d))?(?!:\d)"
)
_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
_WORDS.update({w: 10 * (i + 3) for i, w in enumerate("thirty forty fifty sixty seventy eighty ninety".split())})
_NUMBER_WORD = re.compile(
    r"(?i)\b("
    + "|".join(sorted(_WORDS, key=len, reverse=True))
    + r")(?:[- ](one|two|three|four|five|six|seven|eight|nine))?\b"
)
_REFERENCE_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")
_CALCULATOR = re.compile(r"<<[^<>\n]*>>")  # GSM8K annotations: "$<<9*2=18>>18"
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_PHRASE = re.compile(
    r"(?i)(?:\b(?:the\s+)?(?:(?:correct|right|final|total)\s+)?answer\b(?:\s+to\s+(?:this|the)\s+(?:question|problem))?"
    r"(?:\s+(?:here|simply|actually|then|now))?\s*(?:would\s+be|will\s+be|should\s+be|is|was|=|:)|####)[\s*_\"'“‘:]*"
)
_IS_ANSWER = re.compile(
    r"(?i)\s+(?:is|was)\s+(?:the\s+)?(?:correct\s+|right\s+|final\s+)?answer\b(?!\s+(?:to|of|for)\b)"
)
_SENTENCE_END = re.compile(r"[.!?;](?=\s|$)|\n")  # a "." inside "9.8" is not followed by a space
# An unsolved equation has a variable: "10x", "2n" (a coefficient glued to it), or a lone x/y/n in the
# working that is not the "x" of a product between two numbers ("18 x 41").
_VARIABLE_EQUATION = re.compile(
    r"\d[xyznN]\b|(?<![\d.]\s)(?<![\d.])\b[xyzn]\b(?!\s*\d)|(?<=[*+/-]\s)[xyzn]\b|\b[yzn]\s*[*+/-]"
)
_OPERATOR = re.compile(r"[+*/×÷=]|\s[-x]\s|\d\s*-\s*\d")
_RESULT_VERB = re.compile(r"(?i)\b(?:which|that|this)\s+(?:is|are|was|were|makes|gives|equals)\b")


def _clean(text: str) -> str:
    text = _CALCULATOR.sub(lambda m: " " * len(m.group(0)), text)
    # Currency signs sit between a minus and the digits ("-$5") and never change the value.
    return text.replace("\u2212", "-").replace("\\$", "$").replace("$", "")


def number_value(token: str) -> float | None:
    """The value of a number token ("1,000", "-3/4", "9.80", "four"); None for a zero denominator."""
    words = _NUMBER_WORD.fullmatch(token.strip())
    if words:
        return float(_WORDS[words.group(1).lower()] + (_WORDS[words.group(2).lower()] if words.group(2) else 0))
    token = token.replace(",", "")
    if "/" in token:
        numerator, denominator = token.split("/", 1)
        return None if float(denominator) == 0 else float(numerator) / float(denominator)
    return float(token)


def _first_number(text: str) -> tuple[str, int, int] | None:
    """The first number (digits or a number word) in ``text``, with its start and end offsets."""
    digits, word = _NUMBER.search(text), _NUMBER_WORD.search(text)
    match = min((m for m in (digits, word) if m), key=lambda m: m.start(), default=None)
    if match is None:
        return None
    return match.group(0).replace(",", ""), match.start(), match.end()


def _sentence(text: str, start: int) -> str:
    end = _SENTENCE_END.search(text, start)
    return text[start : end.start() if end else len(text)]


def _result_of(span: str) -> str | None:
    """The number a stated answer gives: after the last "=" of an equation, else the first number."""
    if "=" in span:
        left, right = span.rsplit("=", 1)
        if _VARIABLE_EQUATION.search(left) and not re.fullmatch(r"\s*[A-Za-z]\s*", left):
            return None  # "10x = 20" is an unsolved equation, "N = 220" gives N
        found = _first_number(right)
        return found[0] if found and not right[: found[1]].strip(" $*_") else None
    if re.match(r"\s*[A-Za-z]\b(?!\w)", span) and not _NUMBER_WORD.match(span.strip()):
        return None  # "The answer is N."
    found = _first_number(span)
    return found[0] if found else None


class _Reader:
    def __init__(self, text: str, question: str = "", truncated: bool = False):
        self.text = text
        self.truncated = truncated
        self.asked = _asked(question) if question else (None, set())
        self.given = {number_value(n) for n in _NUMBER.findall(question)}

    def commitments(self) -> list[Commitment]:
        found = self._boxed() + self._phrases() + self._opening()
        return found or self._conclusion()

    def _boxed(self) -> list[Commitment]:
        out = []
        for match in _BOXED.finditer(self.text):
            depth, start = 1, match.end()
            for i in range(start, len(self.text)):
                depth += {"{": 1, "}": -1}.get(self.text[i], 0)
                if depth == 0:
                    content = _LATEX_FRAC.sub(r"\1/\2", self.text[start:i].replace("{,}", ","))
                    for command in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ "):
                        content = content.replace(command, "")
                    value = _result_of(content)
                    if value is not None:
                        out.append(Commitment(value, match.start(), i))
                    break
        return out

    def _phrases(self) -> list[Commitment]:
        out = []
        for match in _PHRASE.finditer(self.text):
            if discounted(self.text, match.start(), match.end()):
                continue  # "the previous answer was 2.233", "your original answer is ..."
            span = _sentence(self.text, match.end())
            value = _result_of(span)
            if value is not None:
                out.append(Commitment(value, match.start(), match.end() + len(span)))
        for match in _IS_ANSWER.finditer(self.text):  # "94.2% is the answer", "= 80g, which is the answer"
            head = self.text[self.text.rfind("\n", 0, match.start()) + 1 : match.start()]
            last = list(_NUMBER.finditer(head))
            if last and re.fullmatch(r"[ %*_]*(?:[a-zA-Z]{1,3})?\s*,?\s*(?:which|that)?\s*", head[last[-1].end() :]):
                out.append(
                    Commitment(
                        last[-1].group(0).replace(",", ""), match.start() - len(head) + last[-1].start(), match.end()
                    )
                )
        return out

    def _opening(self) -> list[Commitment]:
        """A reply whose first words are a number ("12", "One", "10 cats.") and no calculation."""
        lead = re.match(r"[\s*_>#\"'“‘-]*", self.text).end()
        line = self.text[lead:].split("\n", 1)[0]
        found = _first_number(line)
        others = _NUMBER.findall(line) + [m.group(0) for m in _NUMBER_WORD.finditer(line)]
        if found is None or found[1] != 0 or _OPERATOR.search(line) or len(others) > 1:
            return []  # no number first, or working ("20 / 1.5 = 15 minutes"), or a row of numbers
        following = self.text[lead + len(line) :].lstrip("\n").split("\n", 1)[0]
        if _NUMBER.fullmatch(following.strip()):
            return []  # "1\n1\n2\n4 ...": a list of numbers, not an answer
        return [Commitment(found[0], lead, lead + found[2])]

    def _conclusion(self) -> list[Commitment]:
        """No explicit answer: the last complete sentence, when it states a result with words."""
        body = self.text.rstrip(" \t\n*_\"'”’`")
        if self.truncated or not body or body[-1] not in ".!)%" and not body[-1].isalnum():
            return []  # cut off, or the last sentence is unfinished: no conclusion
        if re.search(r"(?i)\b(?:and|or|the|of|to|a|is|by|with|so|which|that)$", body):
            return []
        pieces = [p for p in re.split(r"(?<=[.!?])\s+|\n+", body) if p.strip()]
        last = pieces[-1] if pieces else ""
        if not re.search(r"[A-Za-z]{3,}", last) or _first_number(last) is None:
            return []  # "3 - 25 = 18" alone states no quantity
        verb = list(_RESULT_VERB.finditer(last))
        span = last[verb[-1].end() :] if verb and "=" not in last else last
        value = _result_of(span)
        if value is None or not self._about_the_question(last):
            return []
        if number_value(value) in self.given and "=" not in last and not _CONCLUSION.match(last):
            return []  # "Sara picked 45 pears, Sally picked 11 pears": the question's facts, restated
        start = len(body) - len(last)
        return [Commitment(value, start, len(body))]

    def _about_the_question(self, sentence: str) -> bool:
        """Whether a sentence states the quantity asked: its counted noun, else most of the question's words."""
        own = _stems(sentence)
        counted, words = self.asked
        if not words:
            return True  # no question to compare with (the bare extract_number)
        if counted:
            return counted in own
        return bool(words) and len(own & words) / len(words) >= 0.5


_CONCLUSION = re.compile(r"(?i)\s*(?:so|therefore|thus|hence|in\s+total|in\s+all|altogether|finally|the\s+total)\b")
_HOW = re.compile(
    r"(?i)\bhow\s+(?:many|much)\s+((?:[a-z'-]+\s+){0,4}?)(?:did|does|do|will|would|are|is|were|was|can|could|should|has|have|had|must)\b"
)
_STOP = frozenset(
    "the and for are was were that this with from have has had does did what which when where who how many "
    "much you your they them their there here its his her she him can could would should will then than into "
    "about also all some more most each only just very in on of to at by or as a an be is it do if".split()
)


def _stems(text: str) -> set[str]:
    out = set()
    for word in re.findall(r"[a-z]{2,}", text.casefold()):
        if word not in _STOP:
            out.add(
                word[:-3] + "y"
                if word.endswith("ies")
                else word[:-1]
                if word.endswith("s") and not word.endswith("ss")
                else word
            )
    return out


def _asked(question: str) -> tuple[str | None, set[str]]:
    """(the noun a "How many/much X ..." question counts, the question's own words before any "if")."""
    sentences = [s for s in re.split(r"(?<=[.?!])\s+", question.strip()) if s.strip()]
    last = next((s for s in reversed(sentences) if s.rstrip().endswith("?")), sentences[-1] if sentences else "")
    how = _HOW.search(last)
    nouns = [w for w in re.findall(r"[a-z]+", how.group(1).casefold()) if w not in _STOP] if how else []
    counted = sorted(_stems(nouns[-1]))[0] if nouns and _stems(nouns[-1]) else None
    main = re.sub(r"(?i)\b(?:if|when|after|given)\b[^,?]*,", " ", last)  # "If ..., how many ...?" -> "how many ...?"
    return counted, _stems(main) or _stems(last)


def extract_number(completion_text: str, question: str = "", truncated: bool = False) -> str | None:
    """The number a completion commits to as its final answer (module doc), or None."""
    return _read(completion_text, question, truncated)[0]


def _read(completion_text: str, question: str = "", truncated: bool = False) -> tuple[str | None, str | None]:
    text = readable_part(_clean(completion_text), question or None)
    commitments = _Reader(text, question, truncated).commitments()
    # Commitments compare by value: "The answer is 4. ... Answer: 4.0" is one answer.
    canonical = {c.value: c.value for c in commitments}
    for c in commitments:
        value = number_value(c.value)
        for other in canonical:
            if value is not None and number_value(other) == value:
                canonical[c.value] = other
                break
    return decide(text, [Commitment(canonical[c.value], c.start, c.end, c.conflict) for c in commitments])


class NumericVerifier:
    """Correct when the completion's final number equals the reference within a tolerance."""

    name = "numeric"

    def __init__(self, *, abs_tol: float = 1e-6, rel_tol: float = 1e-6, **unknown: Any):
        reject_unknown_options(self.name, unknown, ("abs_tol", "rel_tol"))
        for option, value in (("abs_tol", abs_tol), ("rel_tol", rel_tol)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
            if not ok:
                raise VerifierError(f"numeric.{option}", value, "must be a finite number >= 0")
        self.abs_tol = float(abs_tol)
        self.rel_tol = float(rel_tol)

    def reference_value(self, question: Question) -> float:
        """The reference answer as a number; "1,000", "$5", "9.80", "3/4" and "50%" all parse."""
        answer = question.answer
        cleaned = answer.strip().replace(",", "").replace("$", "").rstrip(".%").strip()
        value = number_value(cleaned) if _REFERENCE_NUMBER.fullmatch(cleaned) else None
        if value is None:
            raise VerifierError(
                "answer", answer, f"question {question.id!r}: the numeric verifier needs a numeric reference answer"
            )
        return value

    def validate(self, question: Question) -> None:
        """Refuse a question whose reference answer is not a number (before any sampling)."""
        self.reference_value(question)

    def check(self, completion_text: str, question: Question, *, truncated: bool = False) -> VerifyResult:
        """``truncated``: the completion was cut at the length limit, so its last sentence concludes nothing."""
        require_str("completion_text", completion_text)
        reference = self.reference_value(question)
        extracted, reason = _read(completion_text, question.question, truncated)
        if extracted is None:
            return VerifyResult(False, None, reason)
        value = number_value(extracted)
        correct = value is not None and math.isclose(value, reference, rel_tol=self.rel_tol, abs_tol=self.abs_tol)
        return VerifyResult(correct, extracted, reason)
