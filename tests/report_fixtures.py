"""Real records for the HTML report's tests: three tiny-model trees scored by the session's engine.

The engine is tests/conftest.py's ``service_engine`` (the tiny random Llama, teachers ``demo`` and
``cw``, methods forward and reverse KL, tests/service_setup.py); records carry their prefix token ids,
as ``gradalign report --server`` asks for them. Built once per session and shared by
tests/test_html_report.py and tests/test_html_report_browser.py.
"""

from __future__ import annotations

import dataclasses
import functools

from service_setup import QUESTION, QUESTION_2, TEACHERS

QUESTION_3 = {
    "id": "q3",
    "question": "what is 3 + 2 ?",
    "answer": "5",
    "solution": "3 + 2 = 5 . the answer is 5",
    "verifier": "regex",
    "verifier_options": {"pattern": r"\b5\b"},
}
METHODS = ("forward_kl", "reverse_kl")
SETTINGS = {"num_rollouts": 4, "nodes_per_path": 3}  # a few nodes per rollout, some shared, some not


@functools.lru_cache(maxsize=1)
def _run(engine) -> tuple[list[dict], dict]:
    from gradalign_client.canonical import json_safe
    from gradalign_engine.aggregate import build_report
    from gradalign_engine.data import Question

    analysis = dataclasses.replace(engine.config.analysis, include_prefix_ids=True)
    rollouts = dataclasses.replace(engine.config.rollouts, **SETTINGS)
    records, trees = [], []
    for item in (QUESTION, QUESTION_2, QUESTION_3):
        tree = engine.build_tree(Question.from_dict(item), rollouts=rollouts)
        records.extend(engine.score_tree(tree, list(TEACHERS), list(METHODS), analysis=analysis))
        trees.append(dataclasses.asdict(tree.summary))
    report = build_report(records, analysis, seed=engine.config.seed, trees=trees)
    summary = {"receipt": engine.receipt(), "trees": trees, "report": report.to_dict()}
    return [json_safe(r.to_dict()) for r in records], json_safe(summary)


def tiny_run(engine) -> tuple[list[dict], dict]:
    """(records as canonical dicts, an analyze-style summary: receipt, trees, report); fresh copies."""
    import copy

    return copy.deepcopy(_run(engine))
