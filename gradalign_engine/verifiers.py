"""Verifiers: judge whether a completion answers a question correctly.

A verifier reads a completion, extracts its final answer and compares it with the question's
reference ``answer``. Verifiers are looked up by name in a registry (``Question.verifier`` names
one); :func:`register_verifier` adds new kinds, :func:`get_verifier` builds one with options.

Built-ins: ``numeric`` (final number, compared with a tolerance), ``choice`` (multiple-choice
letter), ``yesno``, ``exact`` (normalised string match) and ``regex`` (a user pattern).

This module knows nothing of models, tokens, prompts or how datasets are stored: it sees only the
completion text and the :class:`~gradalign_engine.data.Question`. Verifiers are pure functions of
those two, so they are safe to call from any thread.
"""

from __future__ import annotations

import math
import re
import string
import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from .data import Question, choice_letters
from .errors import GradalignError

__all__ = [
    "VerifierError",
    "UnknownVerifierError",
    "VerifyResult",
    "Verifier",
    "VerifierFactory",
    "NumericVerifier",
    "ChoiceVerifier",
    "YesNoVerifier",
    "ExactVerifier",
    "RegexVerifier",
    "register_verifier",
    "get_verifier",
    "verifier_names",
    "verify",
    "normalize_text",
    "extract_number",
]


class VerifierError(GradalignError, ValueError):
    """A bad verifier name, option or reference answer; the message names the field and the value."""

    code = "INVALID_ARGUMENT"

    def __init__(self, field_name: str, value: Any, reason: str):
        self.field_name = field_name
        self.value = value
        self.reason = reason
        super().__init__(f"{field_name}={value!r}: {reason}")


class UnknownVerifierError(VerifierError):
    """No verifier is registered under the requested name; the message lists the known ones."""

    def __init__(self, name: Any, known: list[str]):
        self.name = name
        self.known = known
        super().__init__("verifier", name, f"unknown verifier; known: {', '.join(known) or '(none)'}")


@dataclass(frozen=True)
class VerifyResult:
    """The verdict on one completion. ``extracted`` is the answer read from it (None if none found)."""

    correct: bool
    extracted: str | None


@runtime_checkable
class Verifier(Protocol):
    """What the engine needs of a verifier. Plug-ins need not inherit from anything."""

    name: str

    def check(self, completion_text: str, question: Question) -> VerifyResult:
        """Judge ``completion_text`` against ``question.answer``."""
        ...


VerifierFactory = Callable[..., Verifier]


# --------------------------------------------------------------------------------------------
# Shared text helpers
# --------------------------------------------------------------------------------------------

# "The answer is", "final answer:", "Answer =" ... ; GSM8K's original "#### N" marker too.
_ANSWER_PHRASE = re.compile(r"\banswer\b(?:\s+is\b|\s*[:=])|####", re.IGNORECASE)
# Markup that wraps an answer without being part of it (markdown bold/italic/code, quotes).
_WRAPPERS = "*_`\"'"
_TRAILING_PUNCTUATION = ".,;:!?"


def normalize_text(text: str) -> str:
    """Normalise for exact comparison: casefold, collapse whitespace, drop trailing punctuation
    and wrapping markup (``**Paris**.`` and ``paris`` compare equal)."""
    text = " ".join(text.casefold().split())
    previous = None
    while text != previous:  # "**Paris.**." needs several passes
        previous = text
        text = text.rstrip(_TRAILING_PUNCTUATION).strip(_WRAPPERS).strip()
    return text


def _answer_spans(text: str) -> list[str]:
    """The text after each answer phrase, up to the end of its line (first line with text)."""
    spans = []
    for match in _ANSWER_PHRASE.finditer(text):
        rest = text[match.end():].lstrip(" \t:")
        rest = rest.lstrip("\r\n") if rest[:1] in ("\r", "\n") else rest  # "The answer is:\nParis"
        spans.append(rest.split("\n", 1)[0].strip())
    return spans


def _final_answer_text(text: str) -> str:
    """The text after the last answer phrase, else the whole completion."""
    spans = _answer_spans(text)
    return spans[-1] if spans else text


def _require_str(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise VerifierError(name, value, "must be a string")


def _reject_unknown_options(verifier_name: str, unknown: dict[str, Any], known: tuple[str, ...] = ()) -> None:
    """Refuse options a verifier does not take, by name (a typo must not be silently ignored)."""
    if unknown:
        key = sorted(unknown)[0]
        takes = f"known: {', '.join(known)}" if known else f"the {verifier_name} verifier takes none"
        raise VerifierError(f"{verifier_name}.{key}", unknown[key], f"unknown option; {takes}")


# --------------------------------------------------------------------------------------------
# numeric
# --------------------------------------------------------------------------------------------

# One number: optional minus, digits with optional thousands commas and decimals, or ".5", then an
# optional "/den" making a simple fraction. The look-behind stops "16-3" yielding "-3" and "x2" "2".
_NUMBER = re.compile(
    r"(?<![A-Za-z0-9.])"
    r"-?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:/\d+(?!\d|\.\d))?"
)
_REFERENCE_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")
_CALCULATOR = re.compile(r"<<[^<>\n]*>>")  # GSM8K annotations: "$<<9*2=18>>18"
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_SENTENCE_END = re.compile(r"[.!?;](?=\s|$)")  # a "." inside "9.8" is not followed by a space
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")


def _clean_numeric_text(text: str) -> str:
    text = _CALCULATOR.sub("", text)
    # Currency signs sit between a minus and the digits ("-$5") and never change the value.
    return text.replace("\u2212", "-").replace("\\$", "").replace("$", "")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every \\boxed{...}, with nested braces balanced."""
    contents = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    contents.append(text[start:i])
                    break
    return contents


def _latex_to_plain(text: str) -> str:
    text = text.replace("{,}", ",")  # LaTeX thousands separator: 1{,}000
    text = _LATEX_FRAC.sub(r"\1/\2", text)
    for command in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ "):
        text = text.replace(command, "")
    return text


def _number_value(token: str) -> float | None:
    """The value of a number token ("1,000", "-3/4", "9.80"); None for a zero denominator."""
    token = token.replace(",", "")
    if "/" in token:
        numerator, denominator = token.split("/", 1)
        if float(denominator) == 0:
            return None
        return float(numerator) / float(denominator)
    return float(token)


def _first_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    return match.group(0).replace(",", "") if match else None


def extract_number(completion_text: str) -> str | None:
    """The final numeric answer of a completion, in priority order: the last ``\\boxed{}`` holding
    a number; the last "The answer is N" / "answer: N" / "#### N" holding a number (the first
    number after it in its sentence, or after the sentence's last "=" when it states a sum); else
    the last number anywhere.
    Returned without commas or currency signs ("1,000" -> "1000"), or None."""
    text = _clean_numeric_text(completion_text)
    for content in reversed(_boxed_contents(text)):
        number = _first_number(_latex_to_plain(content))
        if number is not None:
            return number
    for span in reversed(_answer_spans(text)):
        span = _SENTENCE_END.split(span, 1)[0]  # "The answer is 5. Check: 2 + 2 = 4" -> "5"
        # "The answer is 3 + 4 = 7": the result follows the last "=", not the first operand.
        number = _first_number(span.rsplit("=", 1)[-1]) if "=" in span else None
        number = number if number is not None else _first_number(span)
        if number is not None:
            return number
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


class NumericVerifier:
    """Correct when the completion's final number equals the reference within a tolerance."""

    name = "numeric"

    def __init__(self, *, abs_tol: float = 1e-6, rel_tol: float = 1e-6, **unknown: Any):
        _reject_unknown_options(self.name, unknown, ("abs_tol", "rel_tol"))
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
        value = _number_value(cleaned) if _REFERENCE_NUMBER.fullmatch(cleaned) else None
        if value is None:
            raise VerifierError("answer", answer, f"question {question.id!r}: the numeric verifier needs a numeric reference answer")
        return value

    def check(self, completion_text: str, question: Question) -> VerifyResult:
        _require_str("completion_text", completion_text)
        reference = self.reference_value(question)
        extracted = extract_number(completion_text)
        if extracted is None:
            return VerifyResult(False, None)
        value = _number_value(extracted)
        correct = value is not None and math.isclose(value, reference, rel_tol=self.rel_tol, abs_tol=self.abs_tol)
        return VerifyResult(correct, extracted)


# --------------------------------------------------------------------------------------------
# choice
# --------------------------------------------------------------------------------------------

_DEFAULT_LETTERS = "ABCDE"


class ChoiceVerifier:
    """Multiple choice: correct when the chosen letter is the reference letter.

    Tiers, the first that finds something wins, and inside a tier the last occurrence wins:
    1. an answer phrase: "The answer is (B)", "Answer: B", "**Answer:** B";
    2. a marked letter: "**B**", "(B)", "B)";
    3. a lone letter: the whole completion, or one line, is just "B" (with optional punctuation);
    4. the exact text of one of ``question.choices`` as the whole completion (normalised as by
       ``exact``). The text after the last answer phrase matching a choice exactly goes before
       tier 1, so "The answer is A mixture." picks the choice "A mixture", not letter A.
    Letters must be capitals (a lowercase "a" is an article) except in a one-letter completion.
    Valid letters are A-E, or one per choice when the question lists its choices.
    """

    name = "choice"

    def __init__(self, **options: Any):
        _reject_unknown_options(self.name, options)
        self._patterns: dict[str, tuple[re.Pattern[str], ...]] = {}

    def _tiers(self, letters: str) -> tuple[re.Pattern[str], ...]:
        patterns = self._patterns.get(letters)
        if patterns is None:
            letter = f"([{letters}])"
            patterns = (
                re.compile(r"(?i:\banswer\b(?:\s+is\b|\s*[:=]))(?:\s*(?i:option|choice)\b)?[\s:*_(\[\"'`]*" + letter + r"(?![\w'])"),
                re.compile(r"\*\*\s*\(?" + letter + r"\)?[.:]?\s*\*\*|\(" + letter + r"\)|(?<![\w(])" + letter + r"\)"),
                re.compile(r"^[\s*_(\[]*" + letter + r"[\s*_)\].:]*$", re.MULTILINE),
            )
            self._patterns[letters] = patterns
        return patterns

    @staticmethod
    def _letters_for(question: Question) -> str:
        return "".join(choice_letters(len(question.choices))) if question.choices else _DEFAULT_LETTERS

    def extract(self, completion_text: str, question: Question) -> str | None:
        """The letter the completion chooses, or None."""
        letters = self._letters_for(question)
        by_text = self._match_choice_text(_final_answer_text(completion_text), question, letters)
        spans = _answer_spans(completion_text)
        if by_text is not None and spans:
            # "The answer is A mixture." names choice B by its text; tier 1 would read the "A".
            return by_text
        for pattern in self._tiers(letters):
            matches = list(pattern.finditer(completion_text))
            if matches:
                last = matches[-1]
                return next(g for g in last.groups() if g is not None)
        whole = completion_text.strip().strip(_WRAPPERS + "()[].:").strip()
        if len(whole) == 1 and whole.upper() in letters:  # "b" alone is unambiguous
            return whole.upper()
        return by_text

    @staticmethod
    def _match_choice_text(text: str, question: Question, letters: str) -> str | None:
        final = normalize_text(text)
        for letter, choice in zip(letters, question.choices):
            if final == normalize_text(choice):
                return letter
        return None

    def check(self, completion_text: str, question: Question) -> VerifyResult:
        _require_str("completion_text", completion_text)
        reference = question.answer.strip().upper()
        if len(reference) != 1 or reference not in string.ascii_uppercase:
            raise VerifierError("answer", question.answer, f"question {question.id!r}: the choice verifier needs a letter answer")
        extracted = self.extract(completion_text, question)
        return VerifyResult(extracted == reference, extracted)


# --------------------------------------------------------------------------------------------
# yesno
# --------------------------------------------------------------------------------------------

_YES_NO = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}
_YES_NO_WORD = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_YES_NO_PHRASE = re.compile(
    r"\banswer\b(?:\s+is\b|\s*[:=])[\s:*_(\[\"'`]*(yes|no|true|false)\b", re.IGNORECASE
)


class YesNoVerifier:
    """Yes/no questions: the last "answer is yes/no" phrase, else the first yes/no/true/false word.
    "true" counts as "yes" and "false" as "no", in completions and references alike."""

    name = "yesno"

    def __init__(self, **options: Any):
        _reject_unknown_options(self.name, options)

    @staticmethod
    def extract(completion_text: str) -> str | None:
        """"yes", "no" or None."""
        phrases = _YES_NO_PHRASE.findall(completion_text)
        if phrases:
            return _YES_NO[phrases[-1].lower()]
        word = _YES_NO_WORD.search(completion_text)
        return _YES_NO[word.group(1).lower()] if word else None

    def check(self, completion_text: str, question: Question) -> VerifyResult:
        _require_str("completion_text", completion_text)
        reference = _YES_NO.get(question.answer.strip().lower())
        if reference is None:
            raise VerifierError("answer", question.answer, f"question {question.id!r}: the yesno verifier needs yes, no, true or false")
        extracted = self.extract(completion_text)
        return VerifyResult(extracted == reference, extracted)


# --------------------------------------------------------------------------------------------
# exact and regex
# --------------------------------------------------------------------------------------------


class ExactVerifier:
    """Normalised exact match of the final answer (after the last "The answer is" / "Answer:",
    else the whole completion) with the reference; see :func:`normalize_text`."""

    name = "exact"

    def __init__(self, **options: Any):
        _reject_unknown_options(self.name, options)

    def check(self, completion_text: str, question: Question) -> VerifyResult:
        _require_str("completion_text", completion_text)
        raw = _final_answer_text(completion_text).strip()
        final = normalize_text(raw)
        return VerifyResult(final != "" and final == normalize_text(question.answer), raw or None)


class RegexVerifier:
    """Option ``pattern`` (required) and ``ignore_case``. Correct when ``pattern`` matches the completion (re.search). When the pattern has a group
    named "answer", that group must instead equal the reference after exact normalisation."""

    name = "regex"

    def __init__(self, *, pattern: str | None = None, ignore_case: bool = False, **unknown: Any):
        _reject_unknown_options(self.name, unknown, ("pattern", "ignore_case"))
        if pattern is None:
            raise VerifierError("regex.pattern", pattern, "required option is missing")
        if not isinstance(pattern, str) or pattern == "":
            raise VerifierError("regex.pattern", pattern, "must be a non-empty regular expression string")
        if not isinstance(ignore_case, bool):
            raise VerifierError("regex.ignore_case", ignore_case, "must be true or false")
        try:
            self.pattern = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
        except re.error as exc:
            raise VerifierError("regex.pattern", pattern, f"invalid regular expression: {exc}") from None

    def check(self, completion_text: str, question: Question) -> VerifyResult:
        _require_str("completion_text", completion_text)
        match = self.pattern.search(completion_text)
        if match is None:
            return VerifyResult(False, None)
        if "answer" not in self.pattern.groupindex:
            return VerifyResult(True, match.group(0))
        answer = match.group("answer")
        if answer is None:  # the group sat in a branch that did not match
            return VerifyResult(False, None)
        return VerifyResult(normalize_text(answer) == normalize_text(question.answer), answer)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_VERIFIER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_REGISTRY: dict[str, VerifierFactory] = {}
_REGISTRY_LOCK = threading.Lock()  # the server may register plug-ins while jobs look names up


def register_verifier(name: str, factory: VerifierFactory, *, replace: bool = False) -> None:
    """Register ``factory(**options) -> Verifier`` under ``name``.

    Raises VerifierError for a malformed name, a non-callable factory, or a name already taken
    (unless ``replace``), so that two plug-ins never silently shadow each other.
    """
    if not isinstance(name, str) or not _VERIFIER_NAME.fullmatch(name):
        raise VerifierError("name", name, "must start with a letter and hold only letters, digits, '_', '.', '-' (at most 64)")
    if not callable(factory):
        raise VerifierError("factory", factory, f"the factory of verifier {name!r} must be callable")
    with _REGISTRY_LOCK:
        if name in _REGISTRY and not replace:
            raise VerifierError("name", name, "a verifier of that name is already registered; pass replace=True to override")
        _REGISTRY[name] = factory


def verifier_names() -> list[str]:
    """The registered verifier names, sorted."""
    with _REGISTRY_LOCK:
        return sorted(_REGISTRY)


def get_verifier(name: str, **options: Any) -> Verifier:
    """Build the verifier registered as ``name`` with ``options``.

    Raises UnknownVerifierError (listing the known names) or VerifierError for bad options.
    """
    with _REGISTRY_LOCK:
        factory = _REGISTRY.get(name) if isinstance(name, str) else None
        known = sorted(_REGISTRY)
    if factory is None:
        raise UnknownVerifierError(name, known)
    try:
        verifier = factory(**options)
    except TypeError as exc:  # a missing or unexpected keyword: the caller's options are wrong
        raise VerifierError(f"{name} options", options, f"rejected by the {name} verifier: {exc}") from exc
    if not isinstance(verifier, Verifier):
        raise VerifierError("factory", factory, f"the factory of verifier {name!r} returned {verifier!r}, which has no name and check()")
    return verifier


def verify(completion_text: str, question: Question, **options: Any) -> VerifyResult:
    """Judge a completion with the verifier the question names (``question.verifier``)."""
    return get_verifier(question.verifier, **options).check(completion_text, question)


register_verifier("numeric", NumericVerifier)
register_verifier("choice", ChoiceVerifier)
register_verifier("yesno", YesNoVerifier)
register_verifier("exact", ExactVerifier)
register_verifier("regex", RegexVerifier)
