"""Distinct nodes and leave-one-out demonstrations on the exact toy, whose rollouts share prefixes.

The toy (tests/exact_toy.py) writes at most 4 tokens from {a, b, c, <eos>} with peaked
distributions, so its 16 base rollouts share the root and often deeper prefixes: the case where
counting a node once per rollout inflated n, and where a rollout could be its own demonstration.
Every expectation is recomputed here from the tree's rollouts by brute force, not by the engine.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from exact_toy import QUESTION, toy_config

from gradalign_engine.config import TeacherSpec
from gradalign_engine.pipeline import Engine
from gradalign_engine.prompts import render_prompt
from gradalign_engine.records import SkipReason
from gradalign_engine.teachers import DEFAULT_WORDING


@pytest.fixture(scope="module")
def engine(toy_model_dir):
    config = toy_config(toy_model_dir)
    teachers = (
        *config.teachers,
        TeacherSpec(name="demo", context="correct_demo"),
        TeacherSpec(name="cw", context="correct_and_wrong"),
    )
    return Engine(dataclasses.replace(config, teachers=teachers))


@pytest.fixture(scope="module")
def tree(engine):
    return engine.build_tree(QUESTION, seed=2)


def _through(tree, prefix) -> list[int]:
    depth = len(prefix)
    return [r.index for r in tree.rollouts if len(r.tokens) > depth and tuple(r.tokens[:depth]) == tuple(prefix)]


def test_each_distinct_prefix_is_one_node_listing_every_rollout_through_it(engine, tree):
    records = engine.score_tree(tree, ["ctx"], ["reverse_kl"])
    prefixes = [tuple(tree.rollouts[r.rollout_index].tokens[: r.depth]) for r in records]
    assert len(prefixes) == len(set(prefixes)), "a prefix was analysed more than once"
    assert sum(r.depth == 0 for r in records) == 1  # the root is one node, not one per rollout
    shared = 0
    for record, prefix in zip(records, prefixes):
        through = _through(tree, prefix)
        assert record.rollouts == through and record.rollout_index == min(through)
        outcomes = {tree.rollouts[i].correct for i in through}
        assert record.rollout_correct == (outcomes.pop() if len(outcomes) == 1 else None)
        assert record.rollouts_correct == sum(tree.rollouts[i].correct for i in through)
        assert record.normalized_depth == pytest.approx(
            sum(record.depth / len(tree.rollouts[i].tokens) for i in through) / len(through)
        )
        shared += len(through) > 1 and record.depth > 0
    assert shared >= 2, "the toy tree should share prefixes below the root"
    assert Counter(r.outcome for r in records)["mixed"] >= 1


def test_a_rollout_never_sees_itself_in_its_teachers_context(engine, tree):
    """With one correct rollout and no data set solution, nodes on that rollout have no demonstration."""
    solved = [r.index for r in tree.rollouts if r.correct]
    assert solved, "the toy tree needs a correct rollout"
    only = max(solved, key=lambda i: len(tree.rollouts[i].tokens))
    lonely = dataclasses.replace(
        tree, rollouts=[dataclasses.replace(r, correct=r.index == only) for r in tree.rollouts]
    )
    records = engine.score_tree(lonely, ["demo"], ["forward_kl"])
    on_it = [r for r in records if only in r.rollouts]
    off_it = [r for r in records if only not in r.rollouts]
    assert on_it and off_it
    for record in on_it:  # the only correct rollout would be its own demonstration: no context
        assert record.skip_reason == SkipReason.NO_CONTEXT and record.demo_source is None
    for record in off_it:
        assert record.demo_source == f"rollout:{only}"


def test_demonstrations_come_from_outside_the_node_and_are_what_the_teacher_saw(engine, tree):
    records = engine.score_tree(tree, ["demo", "cw"], ["forward_kl"])
    checked = 0
    for record in records:
        for source, correct in ((record.demo_source, True), (record.wrong_source, False)):
            if source is None:
                continue
            kind, index = source.split(":")
            assert kind == "rollout" and int(index) not in record.rollouts
            assert tree.rollouts[int(index)].correct is correct
        if record.teacher != "demo" or record.demo_source is None:
            continue
        # q is the student's distribution after the demonstration the record names, rebuilt here.
        demo = tree.rollouts[int(record.demo_source.split(":")[1])]
        context = DEFAULT_WORDING["correct_demo"].format(solution=demo.text.strip())
        prompt = render_prompt(engine.student.tokenizer, QUESTION, engine.config.prompt, context=context)
        prefix = tree.rollouts[record.rollout_index].tokens[: record.depth + 1]
        row = engine.student.score([prompt], [prefix])[0][record.depth].exp()
        for c in record.candidates:
            assert c.q == pytest.approx(float(row[c.token_id]), abs=1e-6)
        checked += 1
    assert checked >= 3
