"""Per-verifier unit tests: answer extraction and comparison of the numeric, choice, yesno, exact
and regex verifiers, with their option and reference errors. The registry lives in
test_verifier_registry.py, the dataset checks in test_verifiers_shared_data.py."""

from __future__ import annotations

import re

import pytest
from verifier_helpers import CHOICES, check, q

from gradalign_engine.verifiers import VerifierError, VerifyResult, extract_number, get_verifier, normalize_text

# ----------------------------------------------------------------------------------------------
# numeric
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("The answer is 42.", "42"),
        ("so 3 + 4 = 7. The answer is 7", "7"),
        ("Answer: 12", "12"),
        ("answer: 12 apples", "12"),
        ("**Answer:** 12", "12"),
        ("The final answer is 5", "5"),
        ("#### 18", "18"),  # GSM8K's original marker
        ("So he has 9 apples left.", "9"),  # a concluding statement (no answer phrase)
        ("The answer is $1,000.", "1000"),
        ("It costs $1,234,567.50 in total", "1234567.50"),
        ("The answer is -5.", "-5"),
        ("The temperature fell to -12 degrees", "-12"),
        ("16-3-4=9", None),  # a bare calculation is working, not a stated answer (CONVENTION.md N3)
        ("So 16-3-4 = 9 eggs are left.", "9"),
        ("the answer is \u22123", "-3"),  # unicode minus
        ("The answer is -$5", "-5"),
        ("The answer is 9.80.", "9.80"),
        ("The answer is .5", ".5"),
        ("The answer is 3/4.", "3/4"),
        ("It was 25%", "25"),
        ("\\boxed{18}", "18"),
        ("I think 7. \\boxed{18} but the answer is 20", None),  # two different answers: none (G2)
        ("\\boxed{\\frac{3}{4}}", "3/4"),
        ("\\boxed{-\\dfrac{1}{2}}", "-1/2"),
        ("\\boxed{1{,}000}", "1000"),
        ("\\boxed{x} so the answer is 4", "4"),  # a boxed without a number is skipped
        ("\\boxed{1} then \\boxed{2}", None),  # two different answers: none (G2)
        ("\\boxed{2} so the answer is 2.", "2"),  # the same answer twice is one answer
        ("The answer is 3. Wait, no. The answer is 5.", "5"),  # last phrase wins
        ("The answer is 5. I checked 2 + 2 = 4 twice.", "5"),  # phrase beats a later number
        ("The answer is unclear, let me count: 6", "6"),  # phrase without a number falls through
        ("The answer is 3 + 4 = 7", "7"),
        ("She makes 9 * 2 = $<<9*2=18>>18 every day", "18"),  # GSM8K calculator annotations
        ("Answer: 10km", "10"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_number(completion, expected):
    assert extract_number(completion) == expected


@pytest.mark.parametrize(
    "completion, reference, correct",
    [
        ("The answer is 4.", "4", True),
        ("The answer is 4.0", "4", True),
        ("The answer is 4", "4.0", True),
        ("The answer is 9.8", "9.80", True),
        ("The answer is 9.80", "9.8", True),
        ("The answer is 1,000", "1000", True),
        ("The answer is 1000", "1,000", True),
        ("The answer is $5", "$5", True),
        ("The answer is 3/4", "0.75", True),
        ("The answer is 0.75", "3/4", True),
        ("The answer is 5/6", "0.8333333333333334", True),
        ("The answer is 0.8333333", "0.8333333333333334", True),  # within 1e-6
        ("The answer is 0.83", "0.8333333333333334", False),
        ("The answer is 3/4", "4", False),  # a fraction is read whole, never as its denominator
        ("The answer is 1/0", "0", False),  # zero denominator: extracted but not a number
        ("The answer is -7", "-7", True),
        ("The answer is 7", "-7", False),
        ("The answer is 5", "4", False),
        ("The answer is 4.000001", "4", True),  # abs 1e-6
        ("The answer is 4.00001", "4", False),
        ("The answer is 1000001", "1000000", True),  # rel 1e-6
        ("The answer is 1000002", "1000000", False),
        ("nothing", "4", False),
        ("The answer is 4.", " 4 ", True),
        ("The answer is 50", "50%", True),
        ("The answer is 18.", "18.", True),
    ],
)
def test_numeric_verifier(completion, reference, correct):
    result = check("numeric", completion, q(reference))
    assert result.correct is correct


def test_numeric_result_carries_extracted_answer():
    assert check("numeric", "The answer is 1,000.", q("1000")) == VerifyResult(True, "1000")
    assert check("numeric", "no number", q("1000")) == VerifyResult(False, None)


def test_numeric_tolerance_options():
    loose = get_verifier("numeric", abs_tol=0.01)
    assert loose.check("The answer is 0.83", q("0.8333333333333334")).correct
    assert not get_verifier("numeric").check("The answer is 0.83", q("0.8333333333333334")).correct
    strict = get_verifier("numeric", abs_tol=0.0, rel_tol=0.0)
    assert strict.check("The answer is 4.0", q("4")).correct
    assert not strict.check("The answer is 4.000001", q("4")).correct


@pytest.mark.parametrize(
    "option, value", [("abs_tol", -1.0), ("rel_tol", float("nan")), ("abs_tol", "0.1"), ("rel_tol", True)]
)
def test_numeric_bad_tolerance_names_option_and_value(option, value):
    with pytest.raises(VerifierError, match=rf"numeric\.{option}=.*{re.escape(repr(value))}"):
        get_verifier("numeric", **{option: value})


@pytest.mark.parametrize("answer", ["four", "4 apples", "1/2/3", "yes"])
def test_numeric_non_numeric_reference_names_question_and_answer(answer):
    with pytest.raises(VerifierError) as info:
        check("numeric", "The answer is 4", q(answer, qid="item-7"))
    assert info.value.field_name == "answer"
    assert repr(answer) in str(info.value) and "item-7" in str(info.value)


# ----------------------------------------------------------------------------------------------
# choice
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("The answer is (B)", "B"),
        ("The answer is (B).", "B"),
        ("The answer is B.", "B"),
        ("Answer: B", "B"),
        ("answer: (B)", "B"),
        ("**Answer:** B", "B"),
        ("The correct answer is option C", "C"),
        ("B)", "B"),
        ("(B)", "B"),
        ("**B**", "B"),
        ("**(D)**", "D"),
        ("B", "B"),
        ("b", "B"),
        ("  C.  ", "C"),
        ("Let me think about stars.\nD", "D"),  # a lone letter on its own line
        ("I first thought (A). Answer: C", "C"),  # an answer phrase beats a marked letter
        ("The answer is A. No wait, the answer is D.", "D"),  # last explicit answer wins
        ("A) red giant\nB) white dwarf\nThe answer is C", "C"),
        ("white dwarf", "B"),  # exact choice text
        ("The answer is black hole.", "D"),
        ("The answer is **Neutron Star**", "C"),
        ("It is a star of some kind", None),
        ("The answer is a white one", None),  # the article "a" is not a letter
        ("The answer is F", None),  # not a letter of a 4-way question
        ("", None),
    ],
)
def test_choice_extraction(completion, expected):
    verifier = get_verifier("choice")
    assert verifier.extract(completion, q("B", "choice", CHOICES)) == expected


def test_choice_text_that_starts_with_a_letter():
    question = q("B", "choice", ("A mixture", "A compound", "An element", "An alloy"))
    assert check("choice", "The answer is A compound.", question) == VerifyResult(True, "B")
    assert check("choice", "A compound", question) == VerifyResult(True, "B")
    assert check("choice", "The answer is A.", question) == VerifyResult(False, "A")
    assert check("choice", "The answer is (B), a compound", question) == VerifyResult(True, "B")


def test_choice_correctness():
    question = q("B", "choice", CHOICES)
    assert check("choice", "The answer is (B)", question) == VerifyResult(True, "B")
    assert check("choice", "The answer is (C)", question) == VerifyResult(False, "C")
    assert check("choice", "white dwarf", question).correct
    assert not check("choice", "red giant", question).correct
    assert check("choice", "nothing useful", question) == VerifyResult(False, None)


def test_choice_without_listed_choices_uses_letters_a_to_e():
    question = q("E", "choice")
    assert check("choice", "The answer is E", question).correct
    assert check("choice", "Answer: (F)", question).extracted is None
    # A five-way question accepts E, a four-way one does not.
    five = q("E", "choice", CHOICES + ("pulsar",))
    assert check("choice", "The answer is E", five).correct
    assert check("choice", "pulsar", five).correct


def test_choice_bad_reference_names_answer():
    with pytest.raises(VerifierError, match=r"answer='maybe'.*'q1'"):
        check("choice", "A", q("maybe", "choice"))


# ----------------------------------------------------------------------------------------------
# yesno
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("Yes.", "yes"),
        ("no", "no"),
        ("NO, it is not.", "no"),
        ("True", "yes"),
        ("false", "no"),
        ("Yes, because... so the answer is no.", None),  # yes, then no, without a correction: none (G2)
        ("Yes. Actually, the answer is no.", "no"),  # an explicit correction wins
        ("The answer is: **Yes**", "yes"),
        ("Answer: false", "no"),
        ("The answer is yes. Later I say no.", "yes"),
        ("The answer is no. Actually the answer is yes.", "yes"),  # last phrase
        ("Well, yes and no", None),  # alternatives are several answers (G2)
        ("Nobody knows; notably not", None),  # no whole word
        ("", None),
    ],
)
def test_yesno_extraction(completion, expected):
    assert get_verifier("yesno").extract(completion) == expected


@pytest.mark.parametrize(
    "completion, reference, correct",
    [
        ("Yes", "yes", True),
        ("Yes", "true", True),
        ("True", "yes", True),
        ("No", "false", True),
        ("no", "No", True),
        ("Yes", "no", False),
        ("I cannot tell", "no", False),
    ],
)
def test_yesno_correctness(completion, reference, correct):
    assert check("yesno", completion, q(reference, "yesno")).correct is correct


def test_yesno_bad_reference_names_answer():
    with pytest.raises(VerifierError, match=r"answer='maybe'"):
        check("yesno", "yes", q("maybe", "yesno"))


# ----------------------------------------------------------------------------------------------
# exact
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  Paris. ", "paris"),
        ("New   York\nCity!", "new york city"),
        ("**Paris**.", "paris"),
        ('"Paris"', "paris"),
        ("STRASSE", "strasse"),
        ("Straße", "strasse"),  # casefold, not lower
        ("...", ""),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    "completion, reference, correct",
    [
        ("Paris", "Paris", True),
        ("  paris. ", "Paris", True),
        ("The capital is Paris. The answer is Paris.", "paris", True),
        ("The answer is:\nParis", "Paris", True),
        ("Answer: New  York", "new york", True),
        ("The answer is Paris.\nHope that helps!", "Paris", True),
        ("I think it is Paris", "Paris", False),  # no phrase: the whole completion must match
        ("The answer is Lyon", "Paris", False),
        ("", "Paris", False),
    ],
)
def test_exact_verifier(completion, reference, correct):
    assert check("exact", completion, q(reference, "exact")).correct is correct


def test_exact_extracted_is_the_final_answer_text():
    assert check("exact", "Reasoning. The answer is Paris.", q("Paris", "exact")).extracted == "Paris."
    assert check("exact", "   ", q("Paris", "exact")) == VerifyResult(False, None)


# ----------------------------------------------------------------------------------------------
# regex
# ----------------------------------------------------------------------------------------------


def test_regex_plain_match():
    verifier = get_verifier("regex", pattern=r"\bphotosynthesis\b")
    assert verifier.check("It is photosynthesis.", q("unused", "regex")) == VerifyResult(True, "photosynthesis")
    assert verifier.check("It is respiration.", q("unused", "regex")) == VerifyResult(False, None)


def test_regex_answer_group_compared_with_reference():
    verifier = get_verifier("regex", pattern=r"FINAL:\s*(?P<answer>[^\n]+)")
    assert verifier.check("work...\nFINAL: Paris.", q("paris", "regex")) == VerifyResult(True, "Paris.")
    assert verifier.check("FINAL: Lyon", q("Paris", "regex")) == VerifyResult(False, "Lyon")
    assert verifier.check("no marker", q("Paris", "regex")) == VerifyResult(False, None)


def test_regex_answer_group_that_did_not_take_part():
    verifier = get_verifier("regex", pattern=r"skip|FINAL: (?P<answer>\w+)")
    assert verifier.check("skip this", q("Paris", "regex")) == VerifyResult(False, None)


def test_regex_ignore_case():
    assert not check("regex", "PARIS", q("x", "regex"), pattern="paris").correct
    assert check("regex", "PARIS", q("x", "regex"), pattern="paris", ignore_case=True).correct


@pytest.mark.parametrize("pattern", ["(", "[a-", "(?P<answer>x"])
def test_regex_invalid_pattern_named_at_construction(pattern):
    with pytest.raises(VerifierError) as info:
        get_verifier("regex", pattern=pattern)
    assert info.value.field_name == "regex.pattern"
    assert repr(pattern) in str(info.value) and "not a valid RE2 regular expression" in str(info.value)


def test_regex_runs_in_linear_time_and_refuses_what_needs_backtracking():
    # (.+)+Z backtracks exponentially in Python's re on a long string without a Z; RE2 does not.
    # 20,000 characters: Python's re would not finish this search in any reasonable time.
    verifier = get_verifier("regex", pattern="(.+)+Z")
    assert not verifier.check("a" * 20_000, q("x", "regex")).correct
    assert verifier.check("a" * 20_000 + "Z", q("x", "regex")).correct
    for needs_backtracking in [r"(a)\1", r"x(?=y)", r"(?<!a)b"]:
        with pytest.raises(VerifierError, match="no backreferences or look-around"):
            get_verifier("regex", pattern=needs_backtracking)
    with pytest.raises(VerifierError, match=r"regex\.pattern='2001 characters': at most 2000"):
        get_verifier("regex", pattern="a" * 2001)


@pytest.mark.parametrize("options", [{}, {"pattern": ""}, {"pattern": 5}, {"pattern": "x", "ignore_case": "yes"}])
def test_regex_bad_options_named(options):
    with pytest.raises(VerifierError, match=r"regex\.(pattern|ignore_case)="):
        get_verifier("regex", **options)
