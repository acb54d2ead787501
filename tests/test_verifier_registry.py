"""The verifier registry and behaviour shared by every verifier: the built-ins, unknown names and
options, registering plug-ins (names, factories, duplicates, isolation between tests), the
completion type check and thread safety."""

from __future__ import annotations

import re
import threading

import pytest
from verifier_helpers import CHOICES, q

from gradalign_engine import verifiers
from gradalign_engine.data import Question
from gradalign_engine.verifiers import (
    ChoiceVerifier,
    NumericVerifier,
    UnknownVerifierError,
    Verifier,
    VerifierError,
    VerifyResult,
    get_verifier,
    register_verifier,
    verifier_names,
    verify,
)


@pytest.fixture
def isolated_registry():
    """Plug-ins registered by a test vanish after it."""
    with verifiers.scoped_registry():
        yield


def test_builtins_registered():
    assert {"numeric", "choice", "yesno", "exact", "regex"} <= set(verifier_names())
    for name in ("numeric", "choice", "yesno", "exact"):
        verifier = get_verifier(name)
        assert isinstance(verifier, Verifier) and verifier.name == name
    assert get_verifier("regex", pattern="x").name == "regex"


def test_unknown_verifier_names_it_and_lists_known():
    with pytest.raises(UnknownVerifierError) as info:
        get_verifier("numerc")
    message = str(info.value)
    assert "'numerc'" in message
    for known in ("choice", "exact", "numeric", "regex", "yesno"):
        assert known in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, VerifierError)
    assert info.value.code == "INVALID_ARGUMENT"


def test_unknown_verifier_of_wrong_type():
    with pytest.raises(UnknownVerifierError, match="None"):
        get_verifier(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["numeric", "choice", "yesno", "exact"])
def test_unknown_option_named(name):
    with pytest.raises(VerifierError, match=rf"{name}\.bogus=1: unknown option"):
        get_verifier(name, bogus=1)


def test_register_custom_verifier(isolated_registry):
    class Contains:
        name = "contains"

        def __init__(self, needle: str = "42"):
            self.needle = needle

        def check(self, completion_text: str, question: Question) -> VerifyResult:
            return VerifyResult(self.needle in completion_text, self.needle)

    register_verifier("contains", Contains)
    assert "contains" in verifier_names()
    assert get_verifier("contains").check("it is 42", q("x", "contains")).correct
    assert not get_verifier("contains", needle="7").check("it is 42", q("x", "contains")).correct
    # verify() picks the verifier the question names.
    assert verify("it is 42", q("x", "contains")).correct
    assert verify("The answer is 5", q("5")).correct
    # Wrong options to a plug-in factory become a VerifierError naming the options.
    with pytest.raises(VerifierError, match=r"contains options=\{'haystack': 1\}"):
        get_verifier("contains", haystack=1)


def test_register_duplicate_refused_unless_replace(isolated_registry):
    with pytest.raises(VerifierError, match=r"name='numeric'.*already registered"):
        register_verifier("numeric", NumericVerifier)
    register_verifier("numeric", lambda **o: NumericVerifier(abs_tol=0.5, **o), replace=True)
    assert get_verifier("numeric").check("The answer is 4.4", q("4")).correct


def test_isolated_registry_restored():
    # Runs after the tests above: their plug-ins and replacements are gone.
    assert "contains" not in verifier_names()
    assert not get_verifier("numeric").check("The answer is 4.4", q("4")).correct


def test_scoped_registry_restores_removals_and_unregister_names_unknown():
    with verifiers.scoped_registry():
        verifiers.unregister_verifier("exact")
        assert "exact" not in verifier_names()
        with pytest.raises(UnknownVerifierError, match="exact"):
            verifiers.unregister_verifier("exact")
    assert "exact" in verifier_names()


@pytest.mark.parametrize("name", ["", "1abc", "has space", "a/b", None, "x" * 65])
def test_register_bad_name_named(isolated_registry, name):
    with pytest.raises(VerifierError, match=re.escape(f"name={name!r}")):
        register_verifier(name, ChoiceVerifier)  # type: ignore[arg-type]


def test_register_non_callable_factory_named(isolated_registry):
    with pytest.raises(VerifierError, match=r"factory='not callable'"):
        register_verifier("thing", "not callable")  # type: ignore[arg-type]


def test_factory_returning_non_verifier_refused(isolated_registry):
    register_verifier("broken", lambda: object())
    with pytest.raises(VerifierError, match=r"'broken' returned"):
        get_verifier("broken")


def test_completion_must_be_text():
    for name in ("numeric", "choice", "yesno", "exact"):
        with pytest.raises(VerifierError, match=r"completion_text=None"):
            get_verifier(name).check(None, q("1"))  # type: ignore[arg-type]


def test_verifiers_are_thread_safe():
    verifier = get_verifier("choice")
    question = q("B", "choice", CHOICES)
    results: list[bool] = []

    def worker() -> None:
        results.extend(verifier.check("The answer is (B)", question).correct for _ in range(200))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 800
