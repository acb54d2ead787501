"""Questions and the JSONL loader: validation, round trips, error messages, the bundled demo set."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from pathlib import Path

import pytest

from gradalign_engine.data import (
    DatasetError,
    Question,
    bundled_dataset_names,
    bundled_dataset_path,
    choice_letters,
    load_questions,
)

# The shared evaluation sets sit beside the repository on every machine and in CI: ../shared/data.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ARC_LINE = {
    "id": "arc-easy-1",
    "question": "Which piece of safety equipment is used to keep mold spores from entering the respiratory system?",
    "choices": ["safety goggles", "breathing mask", "rubber gloves", "lead apron"],
    "answer": "B",
    "verifier": "choice",
}
ADDSUB_LINE = {
    "id": "addsub-1",
    "question": "A bucket contains 3 gallons of water . If Derek adds 6.8 gallons more , how many gallons will "
    "there be in all ?",
    "answer": "9.8",
    "solution": "So in total there will be 3 + 6.8 = 9.8 gallons. The answer is 9.8.",
    "verifier": "numeric",
}


def write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# Question
# ----------------------------------------------------------------------------------------------


def test_question_defaults():
    question = Question(id="a", question="1 + 1?", answer="2")
    assert question.verifier == "numeric"
    assert question.choices == () and question.solution is None and dict(question.extra) == {}


def test_question_is_frozen_and_hashable():
    question = Question(id="a", question="q", answer="2", extra={"summary": "s"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        question.answer = "3"  # type: ignore[misc]
    with pytest.raises(TypeError):
        question.extra["summary"] = "changed"  # type: ignore[index]
    assert hash(question) == hash(Question(id="a", question="q", answer="2", extra={"summary": "other"}))
    assert len({question, Question(id="a", question="q", answer="2", extra={"summary": "s"})}) == 1


def test_question_extra_is_a_copy():
    extra = {"summary": "short"}
    question = Question(id="a", question="q", answer="2", extra=extra)
    extra["summary"] = "changed"
    assert question.extra["summary"] == "short"


def test_question_choices_list_becomes_tuple():
    question = Question(id="a", question="q", answer="A", verifier="choice", choices=["x", "y"])  # type: ignore[arg-type]
    assert question.choices == ("x", "y")


def test_question_equality_includes_extra():
    a = Question(id="a", question="q", answer="2", extra={"summary": "s"})
    assert a == Question(id="a", question="q", answer="2", extra={"summary": "s"})
    assert a != Question(id="a", question="q", answer="2", extra={"summary": "t"})


def test_question_pickles_and_copies():
    question = Question.from_dict({**ARC_LINE, "summary": "masks filter spores"})
    for clone in (pickle.loads(pickle.dumps(question)), copy.deepcopy(question), copy.copy(question)):
        assert clone == question
        assert clone.extra["summary"] == "masks filter spores"
    assert dataclasses.replace(question, answer="C").answer == "C"


@pytest.mark.parametrize(
    "kwargs, field_name, bad",
    [
        ({"id": ""}, "id", "''"),
        ({"id": "   "}, "id", "'   '"),
        ({"id": 7}, "id", "7"),
        ({"question": ""}, "question", "''"),
        ({"question": None}, "question", "None"),
        ({"answer": ""}, "answer", "''"),
        ({"answer": 4}, "answer", "4"),
        ({"verifier": ""}, "verifier", "''"),
        ({"solution": ""}, "solution", "''"),
        ({"solution": 3}, "solution", "3"),
        ({"choices": "ABCD"}, "choices", "'ABCD'"),
        ({"choices": ("only one",), "answer": "A"}, "choices", "['only one']"),
        ({"choices": ("x", ""), "answer": "A"}, "choices[1]", "''"),
        ({"choices": ("x", 5), "answer": "A"}, "choices[1]", "5"),
        ({"choices": ("x", "y"), "answer": "C"}, "answer", "'C'"),
        ({"choices": ("x", "y"), "answer": "a"}, "answer", "'a'"),
        ({"choices": ("x", "y"), "answer": "yes"}, "answer", "'yes'"),
        ({"extra": ["summary"]}, "extra", "['summary']"),
        ({"extra": {1: "x"}}, "extra", "1"),
        ({"extra": {"answer": "5"}}, "extra.answer", "'5'"),
    ],
)
def test_question_validation_names_field_and_value(kwargs, field_name, bad):
    base = {"id": "a", "question": "q", "answer": "2"}
    with pytest.raises(DatasetError) as info:
        Question(**{**base, **kwargs})
    assert info.value.field_name == field_name
    assert f"{field_name}={bad}" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert info.value.code == "INVALID_ARGUMENT"


def test_choice_answer_letters():
    assert choice_letters(4) == ("A", "B", "C", "D")
    five = Question(id="a", question="q", answer="E", verifier="choice", choices=tuple("vwxyz"))
    assert five.answer == "E"
    with pytest.raises(DatasetError, match=r"answer='E'.*one of A, B, C, D"):
        Question(id="a", question="q", answer="E", verifier="choice", choices=tuple("wxyz"))


def test_long_values_are_truncated_in_messages():
    with pytest.raises(DatasetError) as info:
        Question(id="a", question="q", answer="Z", choices=("x" * 500, "y"))
    assert len(str(info.value)) < 400


# ----------------------------------------------------------------------------------------------
# to_dict / from_dict
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("record", [ARC_LINE, ADDSUB_LINE, {**ADDSUB_LINE, "summary": "add them", "source": {"n": 1}}])
def test_round_trip(record):
    question = Question.from_dict(record)
    assert question.to_dict() == record
    assert Question.from_dict(question.to_dict()) == question
    assert Question.from_dict(json.loads(json.dumps(question.to_dict()))) == question


def test_to_dict_field_order_matches_datasets():
    assert list(Question.from_dict(ARC_LINE).to_dict()) == ["id", "question", "choices", "answer", "verifier"]
    assert list(Question.from_dict(ADDSUB_LINE).to_dict()) == ["id", "question", "answer", "solution", "verifier"]


def test_from_dict_keeps_unknown_fields_in_extra():
    question = Question.from_dict({**ADDSUB_LINE, "summary": "add the gallons"})
    assert question.extra == {"summary": "add the gallons"}


def test_from_dict_defaults():
    question = Question.from_dict({"id": "x", "question": "q", "answer": "1"})
    assert question.verifier == "numeric" and question.choices == () and question.solution is None
    assert (
        Question.from_dict({"id": "x", "question": "q", "answer": "1", "choices": None, "solution": None}).choices == ()
    )


@pytest.mark.parametrize("answer, text", [(18, "18"), (9.8, "9.8"), (-3, "-3")])
def test_from_dict_accepts_numeric_answers(answer, text):
    assert Question.from_dict({"id": "x", "question": "q", "answer": answer}).answer == text


@pytest.mark.parametrize(
    "record, field_name",
    [
        ({"question": "q", "answer": "1"}, "id"),
        ({"id": "x", "answer": "1"}, "question"),
        ({"id": "x", "question": "q"}, "answer"),
        ({"id": "x", "question": "q", "answer": True}, "answer"),
        ({"id": "x", "question": "q", "answer": "A", "choices": "A) x B) y"}, "choices"),
        ({"id": "x", "question": "q", "answer": "1", "verifier": None}, "verifier"),
    ],
)
def test_from_dict_errors_name_the_field(record, field_name):
    with pytest.raises(DatasetError) as info:
        Question.from_dict(record)
    assert info.value.field_name == field_name
    assert str(info.value).startswith(f"{field_name}=")


def test_from_dict_refuses_non_objects():
    with pytest.raises(DatasetError, match=r"record=\[1, 2\]: must be a JSON object"):
        Question.from_dict([1, 2])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# load_questions
# ----------------------------------------------------------------------------------------------


def test_load_questions(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ADDSUB_LINE, "", "   ", ARC_LINE])
    questions = load_questions(path)
    assert [q.id for q in questions] == ["addsub-1", "arc-easy-1"]
    assert questions[1].choices == tuple(ARC_LINE["choices"])
    assert load_questions(str(path)) == questions  # str paths too


def test_load_questions_limit(tmp_path):
    records = [{**ADDSUB_LINE, "id": f"q{i}"} for i in range(5)] + ["{broken"]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    assert [q.id for q in load_questions(path, limit=2)] == ["q0", "q1"]
    assert len(load_questions(path, limit=5)) == 5  # the broken line after the limit is not read
    with pytest.raises(DatasetError, match=r":6: line="):
        load_questions(path, limit=6)


@pytest.mark.parametrize("limit", [0, -1, 1.5, "3", True])
def test_load_questions_bad_limit(tmp_path, limit):
    path = write_jsonl(tmp_path / "d.jsonl", [ADDSUB_LINE])
    with pytest.raises(DatasetError, match=rf"limit={limit!r}"):
        load_questions(path, limit=limit)  # type: ignore[arg-type]


def test_load_questions_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DatasetError, match=r"path=.*nope\.jsonl.*not found"):
        load_questions(path)


def test_load_questions_bad_json_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ADDSUB_LINE, '{"id": "x", "question": '])
    with pytest.raises(DatasetError) as info:
        load_questions(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: line=")
    assert "invalid JSON" in message
    assert info.value.line == 2 and info.value.path == str(path)


def test_load_questions_non_object_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["[1, 2]"])
    with pytest.raises(DatasetError, match=r"d\.jsonl:1: record=\[1, 2\]: must be a JSON object"):
        load_questions(path)


def test_load_questions_missing_field_names_file_line_field(tmp_path):
    bad = {k: v for k, v in ADDSUB_LINE.items() if k != "answer"}
    path = write_jsonl(tmp_path / "d.jsonl", [ARC_LINE, "", bad])
    with pytest.raises(DatasetError, match=r"d\.jsonl:3: answer=None: required field is missing") as info:
        load_questions(path)
    assert info.value.field_name == "answer"


def test_load_questions_invalid_field_names_file_line_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{**ARC_LINE, "answer": "F"}])
    with pytest.raises(DatasetError, match=r"d\.jsonl:1: answer='F': with 4 choices"):
        load_questions(path)


def test_load_questions_duplicate_id(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ADDSUB_LINE, ARC_LINE, ADDSUB_LINE])
    with pytest.raises(DatasetError, match=r"d\.jsonl:3: id='addsub-1': duplicate id \(first used on line 1\)"):
        load_questions(path)


def test_load_questions_tolerates_bom_and_crlf(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(ADDSUB_LINE) + "\r\n" + json.dumps(ARC_LINE) + "\r\n").encode())
    assert [q.id for q in load_questions(path)] == ["addsub-1", "arc-easy-1"]


def test_load_questions_keeps_unicode(tmp_path):
    record = {"id": "u", "question": "Janet\u2019s ducks lay 16 eggs?", "answer": "16"}
    path = write_jsonl(tmp_path / "d.jsonl", [record])
    assert load_questions(path)[0].question == record["question"]


# ----------------------------------------------------------------------------------------------
# Bundled data
# ----------------------------------------------------------------------------------------------


def test_bundled_demo():
    path = bundled_dataset_path()
    assert path == bundled_dataset_path("demo") and path.is_file()
    assert "demo" in bundled_dataset_names()
    questions = load_questions(path)
    assert 10 <= len(questions) <= 14
    sources = [q.id.split("-")[0] for q in questions]
    assert {"addsub", "multiarith"} == set(sources)
    assert abs(sources.count("addsub") - sources.count("multiarith")) <= 2
    for question in questions:
        assert question.verifier == "numeric" and question.solution
        assert question.solution.rstrip().endswith(f"The answer is {question.answer}.")


def test_bundled_demo_has_a_readme_with_licenses():
    readme = (bundled_dataset_path().parent / "README.md").read_text(encoding="utf-8")
    assert "Apache-2.0" in readme and "LLM-Adapters" in readme and "demo.jsonl" in readme


def test_bundled_demo_is_a_verbatim_copy_of_the_shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    originals = {}
    for name in ("addsub", "multiarith"):
        originals.update({q.id: q for q in load_questions(SHARED_DATA / f"{name}.jsonl")})
    for question in load_questions(bundled_dataset_path()):
        assert originals[question.id] == question


@pytest.mark.parametrize("name", ["boolq", "arc_easy"])
def test_bundled_study_sets_are_verbatim_copies_of_the_shared_data(name):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    shared = (SHARED_DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    bundled = bundled_dataset_path(f"study_{name}").read_text(encoding="utf-8").splitlines()
    assert len(bundled) == 200 and len(set(bundled)) == 200
    positions = [shared.index(line) for line in bundled]
    assert positions == sorted(positions)  # in their original order


@pytest.mark.parametrize("name", ["nope", "../demo", "demo/../demo", "", "/etc/passwd", None, "demo.jsonl"])
def test_bundled_dataset_bad_names(name):
    with pytest.raises(DatasetError) as info:
        bundled_dataset_path(name)  # type: ignore[arg-type]
    assert f"name={name!r}" in str(info.value)


def test_bundled_dataset_unknown_lists_known():
    with pytest.raises(DatasetError, match=r"name='gsm9k': no bundled dataset of that name; known: .*demo"):
        bundled_dataset_path("gsm9k")


# ----------------------------------------------------------------------------------------------
# The shared datasets all load
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, count, verifier",
    [
        ("gsm8k", 1319, "numeric"),
        ("addsub", 395, "numeric"),
        ("multiarith", 600, "numeric"),
        ("boolq", 3270, "yesno"),
        ("arc_easy", 2376, "choice"),
    ],
)
def test_shared_datasets_load(name, count, verifier):
    path = SHARED_DATA / f"{name}.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    questions = load_questions(path)
    assert len(questions) == count
    assert {q.verifier for q in questions} == {verifier}
    assert all(bool(q.choices) == (verifier == "choice") for q in questions)
    assert all((q.solution is not None) == (name in ("gsm8k", "addsub", "multiarith")) for q in questions)
    # Every record survives the round trip unchanged.
    with path.open(encoding="utf-8") as fh:
        for line, question in zip(fh, questions):
            assert question.to_dict() == json.loads(line)
