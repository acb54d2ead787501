"""The multiple-choice verifier: the option a completion commits to, by letter or by its text.

Reads the completion as tests/verifier_labels/CONVENTION.md says (G1-G6, C1-C6). A commitment is an
answer phrase ("The correct answer is B. oxygen", "You chose B"), the reply's first words ("B.
oxygen", "oxygen"), a sentence or line that starts with a lettered option ("... problem. D.
melting."), or a line holding only a letter. A letter and a text in one commitment must name the
same option; options reproduced as a list ("A. ...\\nB. ...") commit to none; several different
options are no answer.
"""

from __future__ import annotations

import re
from typing import Any

from ..data import Question, choice_letters
from .base import VerifierError, VerifyResult, reject_unknown_options, require_str
from .reading import Commitment, decide, discounted, readable_part, words

__all__ = ["ChoiceVerifier"]

_DEFAULT_LETTERS = "ABCDE"
# "The correct answer is", "Answer:", "the best option would be", "the answer to this riddle is:".
_ANSWER = (
    r"\b(?:the\s+)?(?:(?:correct|right|best|final|most\s+likely|true|my)\s+)?answer"
    r"|\b(?:the\s+)?(?:correct|right|best|final|most\s+likely|true|my)\s+(?:choice|option|response)"
)
_PHRASE = re.compile(
    r"(?i)(?:(?:" + _ANSWER + r")(?:\s+(?:to|for)\s+(?:this|the|that|your)(?:\s+\w+){1,2})?(?:\s+here)?"
    r"\s*(?:would\s+be|will\s+be|should\s+be|must\s+be|is|was|=|:)"
    r"|\b(?:i|you|we)(?:\s+would|\s+will|'d|'ve|\s+have)?\s+(?:choose|chose|chosen|pick|picked|select|selected|go\s+with)"
    r"(?:[^.\n:]{0,80}:)?"
    r"|^[ \t]*(?:choose|select|pick)\b"
    r"|\b(?:is|are)(?=\s+[A-E](?:[.)](?:\s|$)|$)))"
    r"(?:\s+(?:option|choice|letter))?[\s:*_\"'“‘(\[]*",
    re.MULTILINE,
)
_NEGATED = re.compile(r"(?i)\s*(?:neither|not|none|no)\b")
_IS_ANSWER = re.compile(r"(?i)\s+is\s+(?:the\s+)?(?:correct|right|best|true)\s+(?:answer|choice|option)")
_ENUMERATOR = re.compile(r"(?i)(?:\d{1,2}|[ivx]{1,4})[.)]\s+")  # "1. yellow", "ii. trees"
_CONNECTIVES = ("because", "since", "as", "and", "or", "which", "is", "was", "would", "seems", "makes")


class ChoiceVerifier:
    """Multiple choice: correct when the completion commits to the reference letter (see the module doc)."""

    name = "choice"

    def __init__(self, **options: Any):
        reject_unknown_options(self.name, options)

    @staticmethod
    def _letters_for(question: Question) -> str:
        return "".join(choice_letters(len(question.choices))) if question.choices else _DEFAULT_LETTERS

    def validate(self, question: Question) -> None:
        """Refuse a question whose reference answer is not a choice letter (before any sampling)."""
        letters = self._letters_for(question)
        reference = question.answer.strip().upper()
        if len(reference) != 1 or reference not in letters:
            raise VerifierError(
                "answer",
                question.answer,
                f"question {question.id!r}: the choice verifier needs a letter answer among {letters}",
            )

    def read(self, completion_text: str, question: Question) -> tuple[str | None, str | None]:
        """(letter, None) or (None, reason)."""
        # An option's own text is never an invented question, even when it is phrased as one.
        text = readable_part(completion_text, " ".join((question.question, *question.choices)))
        reader = _Reader(text, self._letters_for(question), question.choices)
        return decide(reader.text, reader.commitments())

    def extract(self, completion_text: str, question: Question) -> str | None:
        """The letter the completion commits to, or None."""
        return self.read(completion_text, question)[0]

    def check(self, completion_text: str, question: Question, *, truncated: bool = False) -> VerifyResult:
        require_str("completion_text", completion_text)
        self.validate(question)
        letter, reason = self.read(completion_text, question)
        return VerifyResult(letter == question.answer.strip().upper(), letter, reason)


class _Reader:
    """Finds the commitments of one completion to one question's options."""

    def __init__(self, text: str, letters: str, choices: tuple[str, ...]):
        self.text = text
        self.letters = letters
        self.options = {letter: words(choice) for letter, choice in zip(letters, choices) if words(choice)}
        marker = rf"[*_(\[]*([{letters}])(?:[*_)\]]*)"
        # A letter as an answer: "B", "B.", "(B)", "B)", "**B**", "B:" followed by a break, not by more of a word.
        self.letter = re.compile(marker + r"(?=$|[\s.,;:!?)\]*_\"'”’-])")
        self.lone = re.compile(r"(?m)^[ \t*_>(\[-]*" + marker + r"[ \t.:*_)\]]*$")
        # An option written as an item of a list: "A. text" at a line's start (also "1. A. text"), or after
        # ", " / "; " / "A) " on one line ("A - x, B - y", "A) B) C)").
        self.item = re.compile(
            r"(?:^[ \t*_>-]*(?:\d{1,2}[.)][ \t]+)?|(?<=, )|(?<=; )|(?<=[A-Z]\) ))\(?(["
            + letters
            + r"])(?:[.)]|\s+-)(?=\s|$)",
            re.MULTILINE,
        )
        # A short sentence that is a lettered option: "... in your problem. D. melting."
        self.sentence_item = re.compile(r"(?<=[.!?] )[*_(]*([" + letters + r"])[.)] [^.!?\n]{1,60}(?:[.!?]|$)")

    def commitments(self) -> list[Commitment]:
        listed = self._listed_spans()
        found = self._phrases() + self._start() + self._lone_lines() + self._sentence_items()
        found = [c for c in found if not any(lo <= c.start < hi or lo <= c.end - 1 < hi for lo, hi in listed)]
        return list({c.start: c for c in found}.values())

    # -- where commitments are -------------------------------------------------------------------
    def _phrases(self) -> list[Commitment]:
        out = []
        for match in _PHRASE.finditer(self.text):
            if _NEGATED.match(self.text, match.end()) or discounted(self.text, match.start(), match.end()):
                continue  # "the correct answer is neither A nor B", "another possible answer is C"
            c = self._identify(match.end(), start=match.start())
            if c is not None:
                out.append(c)
        for match in _IS_ANSWER.finditer(self.text):  # "B is the correct answer"
            c = self._identify_before(match.start())
            if c is not None:
                out.append(c)
        return out

    def _start(self) -> list[Commitment]:
        lead = re.match(r"[\s*_>#\"'“‘-]*", self.text).end()
        whole = self.text.strip().strip("*_()[].:").strip()
        if len(whole) == 1 and whole.upper() in self.letters:  # "b" alone is unambiguous
            return [Commitment(whole.upper(), lead, len(self.text))]
        enumerated = _ENUMERATOR.match(self.text, lead)
        if enumerated and not self.letter.match(self.text, lead):
            lead = enumerated.end()
        lower = re.match(r"([a-e])[.)]\s", self.text[lead:])
        if lower and lower.group(1).upper() in self.letters:  # "d. planting flowers"
            c = self._identify(
                lead, start=lead, text=self.text[lead:].replace(lower.group(1), lower.group(1).upper(), 1)
            )
        else:
            c = self._identify(lead, start=lead)
        return [c] if c is not None else []

    def _lone_lines(self) -> list[Commitment]:
        return [Commitment(m.group(1), m.start(1), m.end(1)) for m in self.lone.finditer(self.text)]

    def _sentence_items(self) -> list[Commitment]:
        """A sentence that starts with a lettered option ("... your problem. D. melting.")."""
        out = []
        for match in self.sentence_item.finditer(self.text):
            if len(match.group(0).split()) > 7:
                continue  # "D. Cold springs under the lake cannot provide ...": about D, not choosing it
            c = self._identify(match.start(), start=match.start())
            if c is not None:
                out.append(c)
        return out

    def _listed_spans(self) -> list[tuple[int, int]]:
        """Runs of two or more items in increasing letter order ("A. ...\\nB. ...", "A) B) C)"): a list."""
        items = [(m.group(1), m.start()) for m in self.item.finditer(self.text)]
        spans, i = [], 0
        while i < len(items):
            j = i
            while (
                j + 1 < len(items)
                and items[j + 1][0] > items[j][0]
                and not _PHRASE.search(self.text, items[j][1] + 2, items[j + 1][1])
            ):
                if self.text[items[j][1] : items[j + 1][1]].count("\n") > 2:
                    break  # two blank lines end a list
                j += 1
            if j > i:
                end = self.text.find("\n", items[j][1])
                spans.append((items[i][1], len(self.text) if end < 0 else end))
            i = j + 1
        return spans

    # -- what a commitment names -----------------------------------------------------------------
    def _identify(self, at: int, start: int, text: str | None = None) -> Commitment | None:
        """The option named at ``at``: by its full text, by a letter, or by a letter and a text."""
        source = self.text if text is None else self.text[:at] + text
        at += re.match(r"[ \t]*(?:\n\s*)?", source[at:]).end()  # "The correct answer is:\n\nC. pink"
        rest = source[at:].split("\n", 1)[0]
        by_text = self._option_by_text(rest)
        letter = self.letter.match(rest)
        if letter is not None and _article(rest, letter.end(), by_text is not None):
            letter = None  # "A compound", "A Punnett square is ...": the article, not option A
        if (
            letter is not None
            and by_text is not None
            and words(rest) == self.options[by_text]
            and by_text != letter.group(1)
        ):
            letter = None  # the whole text is an option's ("C?H??O?" is option A, not letter C)
        if letter is None:
            return Commitment(by_text, start, at + len(rest)) if by_text else None
        value = letter.group(1)
        after = rest[letter.end() :].lstrip(" .:)-*_")
        tail = self._option_by_text(after)
        if tail is not None and tail != value:
            return Commitment(
                None, start, at + len(rest), conflict=f"letter and text disagree: {value} and the text of {tail}"
            )
        second = (
            re.match(r"\s*\(([" + self.letters + r"])\)", after[len(self.options.get(value, "")) :]) if tail else None
        )
        if second and second.group(1) != value:  # "A. the soil (D): ..." names two letters at once
            return Commitment(None, start, at + len(rest), conflict=f"several answers: {value}, {second.group(1)}")
        return Commitment(value, start, at + letter.end())

    def _identify_before(self, end: int) -> Commitment | None:
        line_start = self.text.rfind("\n", 0, end) + 1
        head = self.text[line_start:end]
        letter = re.search(rf"[*_(\[\"'“‘]*([{self.letters}])[*_)\].\"'”’]*\s*$", head)
        if letter and (letter.start() == 0 or not head[letter.start() - 1].isalnum()):
            return Commitment(letter.group(1), line_start + letter.start(), end)
        by_text = self._option_by_text(head.strip(" *_\"'"), whole=True)
        return Commitment(by_text, line_start, end) if by_text else None

    def _option_by_text(self, span: str, whole: bool = False) -> str | None:
        """The option whose full text ``span`` is, or starts with (the longest such option)."""
        said = words(span)
        best = None
        for letter, text in self.options.items():
            if said == text or (not whole and said.startswith(text + " ")):
                if best is None or len(text) > len(self.options[best]):
                    best = letter
        return best


def _article(rest: str, letter_end: int, names_option: bool) -> bool:
    """An "A" then a space and a word is the article ("A plant needs ...", "A Punnett square" when that
    is an option's text), unless the word joins a letter to an explanation ("A because ...")."""
    if rest[letter_end - 1 : letter_end] != "A" or rest[letter_end : letter_end + 1] != " ":
        return False
    word = re.match(r" (\w+)", rest[letter_end:])
    if word is None or word.group(1).lower() in _CONNECTIVES:
        return False
    return names_option or word.group(1)[0].islower()
