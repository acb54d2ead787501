"""The exact-match and regex verifiers: a user's own notion of the answer.

``exact`` compares the text after the last answer phrase (else the whole completion) with the
reference after :func:`~gradalign_engine.verifiers.reading.normalize_text`; ``regex`` applies a
pattern the user supplies.
"""

from __future__ import annotations

import re
from typing import Any

from ..data import Question
from .base import VerifierError, VerifyResult, reject_unknown_options, require_str
from .reading import NO_ANSWER, normalize_text

__all__ = ["ExactVerifier", "RegexVerifier", "final_answer_text"]

# "The answer is", "final answer:", "Answer =" ... ; GSM8K's original "#### N" marker too.
_ANSWER_PHRASE = re.compile(r"\banswer\b(?:\s+is\b|\s*[:=])|####", re.IGNORECASE)


def final_answer_text(text: str) -> str:
    """The text after the last answer phrase, up to the end of its line (else the whole completion)."""
    spans = []
    for match in _ANSWER_PHRASE.finditer(text):
        rest = text[match.end() :].lstrip(" \t:")
        rest = rest.lstrip("\r\n") if rest[:1] in ("\r", "\n") else rest  # "The answer is:\nParis"
        spans.append(rest.split("\n", 1)[0].strip())
    return spans[-1] if spans else text


class ExactVerifier:
    """Normalised exact match of the final answer (after the last "The answer is" / "Answer:",
    else the whole completion) with the reference; see :func:`normalize_text`."""

    name = "exact"

    def __init__(self, **options: Any):
        reject_unknown_options(self.name, options)

    def check(self, completion_text: str, question: Question) -> VerifyResult:
        require_str("completion_text", completion_text)
        raw = final_answer_text(completion_text).strip()
        final = normalize_text(raw)
        return VerifyResult(
            final != "" and final == normalize_text(question.answer), raw or None, None if raw else NO_ANSWER
        )


MAX_PATTERN_CHARS = 2000
_RE2_MAX_MEM = 8 << 20  # bytes RE2 may use for one compiled pattern


def _compile_linear(pattern: str, ignore_case: bool):
    """Compile with RE2: matching time is linear in the text, so no pattern can hold the process.

    RE2 has no backreferences or look-around; such patterns are refused with the reason.
    """
    import re2

    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not ignore_case
    options.max_mem = _RE2_MAX_MEM
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise VerifierError(
            "regex.pattern",
            pattern,
            f"not a valid RE2 regular expression ({reason}); RE2 runs in linear time and has no "
            "backreferences or look-around",
        ) from None


class RegexVerifier:
    """Option ``pattern`` (required) and ``ignore_case``. Correct when ``pattern`` matches the
    completion (search). When the pattern has a group named "answer", that group must instead equal
    the reference after exact normalisation. Patterns use RE2 syntax and run in linear time."""

    name = "regex"

    def __init__(self, *, pattern: str | None = None, ignore_case: bool = False, **unknown: Any):
        reject_unknown_options(self.name, unknown, ("pattern", "ignore_case"))
        if pattern is None:
            raise VerifierError("regex.pattern", pattern, "required option is missing")
        if not isinstance(pattern, str) or pattern == "":
            raise VerifierError("regex.pattern", pattern, "must be a non-empty regular expression string")
        if len(pattern) > MAX_PATTERN_CHARS:
            raise VerifierError("regex.pattern", f"{len(pattern)} characters", f"at most {MAX_PATTERN_CHARS}")
        if not isinstance(ignore_case, bool):
            raise VerifierError("regex.ignore_case", ignore_case, "must be true or false")
        self.pattern = _compile_linear(pattern, ignore_case)

    def check(self, completion_text: str, question: Question) -> VerifyResult:
        require_str("completion_text", completion_text)
        match = self.pattern.search(completion_text)
        if match is None:
            return VerifyResult(False, None, "no match")
        if "answer" not in self.pattern.groupindex:
            return VerifyResult(True, match.group(0))
        answer = match.group("answer")
        if answer is None:  # the group sat in a branch that did not match
            return VerifyResult(False, None, "no answer group")
        return VerifyResult(normalize_text(answer) == normalize_text(question.answer), answer)
