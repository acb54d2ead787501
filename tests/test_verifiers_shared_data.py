"""The verifiers against real data: every reference solution of the bundled demo set, and of the
shared datasets (addsub, multiarith, gsm8k, boolq, arc_easy), verifies and a wrong answer does not;
the shared-dataset tests skip when ../shared/data is absent."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from gradalign_engine.data import Question, bundled_dataset_path, load_questions
from gradalign_engine.verifiers import get_verifier, verifier_names

# The shared evaluation sets sit beside the repository on every machine and in CI: ../shared/data.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_bundled_demo_solutions_verify():
    numeric = get_verifier("numeric")
    for question in load_questions(bundled_dataset_path("demo")):
        assert numeric.check(question.solution, question).correct, question.id
        wrong = dataclasses.replace(question, answer=str(int(float(question.answer)) + 1))
        assert not numeric.check(question.solution, wrong).correct, question.id


def _shared(name: str) -> list[Question]:
    path = SHARED_DATA / f"{name}.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return load_questions(path)


_STATED = re.compile(r"the answer is \$?(-?[\d,]*\.?\d+)", re.IGNORECASE)


def _stated_answer(solution: str) -> str | None:
    """The number a solution ends on, read independently of the verifier: after the last "the answer
    is", and after the last "=" there ("The answer is 49 - 34 = 15 customers." states 15)."""
    tail = re.split(r"the answer is", solution, flags=re.IGNORECASE)[-1].split("=")[-1]
    found = re.search(r"-?\d[\d,]*(?:\.\d+)?", tail.replace("$", ""))
    return found.group(0).replace(",", "") if found else None


def _shift(answer: str) -> str:
    """A clearly wrong number: off by 1% and at least 1, outside the relative tolerance."""
    value = float(answer.replace(",", ""))
    return repr(value + max(1.0, abs(value) * 0.01))


# In the LLM-Adapters packaging, some AddSub/MultiArith worked solutions end in "The answer is N"
# with N different from the reference answer (e.g. multiarith-1 says 20, the reference is 6). The
# verifier must still read N; these solutions cannot verify against the reference. Pinned so that a
# change of the data (or of the verifier) shows up here.
KNOWN_WRONG_SOLUTIONS = {"addsub": 25, "multiarith": 40}


@pytest.mark.parametrize("name", ["addsub", "multiarith"])
def test_shared_solutions_verify_against_their_stated_answer(name):
    numeric = get_verifier("numeric")
    questions = _shared(name)
    disagreeing = []
    for question in questions:
        stated_answer = _stated_answer(question.solution)
        assert stated_answer is not None, f"{question.id}: solution has no 'The answer is N'"
        # The verifier reads exactly the stated final answer...
        result = numeric.check(question.solution, dataclasses.replace(question, answer=stated_answer))
        assert result.correct, (question.id, result)
        # ...and judges it against the reference as a number would.
        against_reference = numeric.check(question.solution, question)
        agrees = abs(float(stated_answer) - float(question.answer)) <= 1e-6 * max(1.0, abs(float(question.answer)))
        assert against_reference.correct is agrees, (question.id, against_reference, question.answer)
        if not agrees:
            disagreeing.append(question.id)
        # A wrong reference is rejected (skipped where the shift lands on a wrong stated answer).
        if agrees:
            shifted = dataclasses.replace(question, answer=_shift(question.answer))
            assert not numeric.check(question.solution, shifted).correct, question.id
    assert len(disagreeing) == KNOWN_WRONG_SOLUTIONS[name], disagreeing
    assert len(disagreeing) < 0.1 * len(questions)


@pytest.mark.parametrize("name", ["addsub", "multiarith"])
def test_shared_wrong_final_answers_rejected(name):
    numeric = get_verifier("numeric")
    for question in _shared(name):
        last = list(_STATED.finditer(question.solution))[-1]
        wrong_solution = f"{question.solution[: last.start()]}The answer is {_shift(question.answer)}."
        assert not numeric.check(wrong_solution, question).correct, question.id


def test_shared_gsm8k_solutions_verify():
    # The shared GSM8K solutions have no final-answer line (the original "#### N" was split off
    # into `answer`), and their last number is often not the answer ("... 15 liters out of the 24
    # liters"). So, for this dataset only, the test appends "The answer is {answer}." first.
    numeric = get_verifier("numeric")
    questions = _shared("gsm8k")
    assert not any("The answer is" in question.solution for question in questions)
    for question in questions:
        solution = f"{question.solution}\nThe answer is {question.answer}."
        assert numeric.check(solution, question).correct, question.id
        assert numeric.check(f"{question.solution}\n#### {question.answer}", question).correct, question.id
        wrong = f"{question.solution}\nThe answer is {_shift(question.answer)}."
        assert not numeric.check(wrong, question).correct, question.id


def test_shared_boolq_answers_verify():
    yesno = get_verifier("yesno")
    for question in _shared("boolq"):
        assert question.verifier == "yesno"
        opposite = {"yes": "no", "no": "yes"}[question.answer]
        assert yesno.check(f"The answer is {question.answer}.", question).correct, question.id
        assert yesno.check(f"{question.answer.capitalize()}, I believe so.", question).correct, question.id
        assert not yesno.check(f"The answer is {opposite}.", question).correct, question.id


def test_shared_arc_easy_answers_verify():
    choice = get_verifier("choice")
    for question in _shared("arc_easy"):
        assert question.verifier == "choice"
        letters = "ABCDE"[: len(question.choices)]
        right = question.answer
        wrong = next(letter for letter in letters if letter != right)
        assert choice.check(f"The answer is ({right}).", question).correct, question.id
        assert not choice.check(f"The answer is ({wrong}).", question).correct, question.id
        right_text = question.choices[letters.index(right)]
        wrong_text = question.choices[letters.index(wrong)]
        assert choice.check(right_text, question).correct, question.id
        assert not choice.check(wrong_text, question).correct, question.id


def test_shared_datasets_name_known_verifiers():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    for path in sorted(SHARED_DATA.glob("*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            names = {json.loads(line).get("verifier", "numeric") for line in fh if line.strip()}
        assert names <= set(verifier_names()), (path.name, names)
