"""The exact-enumeration toy shared by tests/test_exact_enumeration.py and bench/bench_exact_toy.py.

A 1-layer random Llama over 6 tokens (<eos> <unk> q a b c) writing at most 4 tokens; a completion
succeeds when its text contains "b". :class:`ExactToy` computes, in float64 and independently of the
engine, every next-token distribution and the success probability of every completion prefix.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from gradalign_engine import gradients as G
from gradalign_engine.config import (
    AnalysisConfig,
    ModelSpec,
    PromptConfig,
    RolloutConfig,
    RunConfig,
    SamplingConfig,
    TeacherSpec,
)
from gradalign_engine.data import Question
from gradalign_engine.prompts import render_prompt

MAX_NEW = 4
QUESTION = Question(id="toy", question="q", answer="b", verifier="regex", extra={"verifier_options": {"pattern": "b"}})
TEACHER_CONTEXT = "q a b a b"


def toy_config(
    model_dir,
    *,
    rollouts: int = 16,
    continuations: int = 4,
    interval: str = "wilson",
    seed: int = 0,
    dtype: str = "float32",
    **rollout_settings,
) -> RunConfig:
    return RunConfig(
        student=ModelSpec(model=str(model_dir), dtype=dtype, device="cpu"),
        teachers=(TeacherSpec(name="ctx", kind="self", context="template", template=TEACHER_CONTEXT),),
        sampling=SamplingConfig(max_new_tokens=MAX_NEW),
        prompt=PromptConfig(mode="raw"),
        rollouts=RolloutConfig(
            num_rollouts=rollouts,
            continuations=continuations,
            nodes_per_window=2,
            nodes_per_path=5,
            candidate_top_k=3,
            min_token_prob=0.0,
            max_continuations=10**6,
            interval=interval,
            **rollout_settings,
        ),
        analysis=AnalysisConfig(methods=("forward_kl", "reverse_kl", "jsd"), min_ideal_norm=0.0, bootstrap_samples=0),
        seed=seed,
    )


class ExactToy:
    """Ground truth by enumeration: next-token distributions and P_succ of every completion prefix."""

    def __init__(self, model_dir):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).double().eval()
        self.eos = self.tok.eos_token_id
        self.student_prompt = render_prompt(self.tok, QUESTION, PromptConfig(mode="raw"))
        self.teacher_prompt = render_prompt(self.tok, QUESTION, PromptConfig(mode="raw"), context=TEACHER_CONTEXT)

    @functools.cache
    def dist(self, prompt: tuple[int, ...], completion: tuple[int, ...]) -> np.ndarray:
        with torch.no_grad():
            logits = self.model(torch.tensor([list(prompt) + list(completion)])).logits[0, -1]
        return torch.softmax(logits, -1).numpy()

    def success(self, completion: tuple[int, ...]) -> bool:
        return "b" in self.tok.decode(list(completion), skip_special_tokens=True)

    @functools.cache
    def p_succ(self, completion: tuple[int, ...]) -> float:
        """P(success | the student has written ``completion``), enumerating every continuation."""
        if (completion and completion[-1] == self.eos) or len(completion) >= MAX_NEW:
            return float(self.success(completion))
        if self.success(completion):
            # "contains b" cannot be undone by later tokens: exactly 1. Summing probabilities instead
            # leaves values 1 - 1e-16 whose differences give g*_exact a spurious direction.
            return 1.0
        probs = self.dist(tuple(self.student_prompt), completion)
        return float(sum(probs[j] * self.p_succ(completion + (j,)) for j in range(len(probs))))


def alignment_error(engine, exact: ExactToy, seed: int, method: str = "reverse_kl") -> tuple[float, int]:
    """Mean |cos(g*_hat, d) - cos(g*_exact, d)| over the scored nodes of one new tree, and their count."""
    return tree_alignment_error(engine, exact, engine.build_tree(QUESTION, seed=seed), method)


def make_toy_model_dir(path):
    """The toy's model: 6 tokens (<eos> <unk> q a b c), peaked random distributions, saved at ``path``."""
    from conftest import TOY_WORDS, make_tiny_model_dir

    return make_tiny_model_dir(
        path,
        words=["q", *TOY_WORDS],
        seed=3,
        hidden=32,
        layers=1,
        init_std=0.6,
        chat_template=None,
        minimal_specials=True,
    )


def scored_nodes(engine, exact: ExactToy, tree, method: str = "reverse_kl"):
    """Each record with a distillation direction, with its prefix, support, p~ and exact v over the support."""
    for rec in engine.score_tree(tree, ["ctx"], [method]):
        if not rec.distill:
            continue
        prefix = tuple(tree.rollouts[rec.rollout_index].tokens[: rec.depth])
        support = [c for c in rec.candidates if c.in_support]
        p = np.array([c.p_renorm for c in support])
        v_exact = np.array([exact.p_succ(prefix + (c.token_id,)) for c in support])
        yield rec, prefix, support, p, v_exact


def tree_alignment_error(engine, exact: ExactToy, tree, method: str = "reverse_kl") -> tuple[float, int]:
    """Mean |cos - exact cos| over every scored node where the exact g* has a direction.

    The node set depends only on the base rollouts, so trees with the same seed and different
    continuation budgets are compared on the same nodes. A node the engine cannot score yet (too few
    continuations to see any success or failure: g*_hat = 0) counts with cosine 0, the value a reader
    can take from "no signal"; dropping it instead would reward small budgets for finding less.
    """
    errors = []
    for rec, _, _, p, v_exact in scored_nodes(engine, exact, tree, method):
        exact_cos = G.cosine(G.ideal_gradient(p, v_exact), np.array(rec.distill))
        if exact_cos is not None:
            errors.append(abs((rec.cosine if rec.cosine is not None else 0.0) - exact_cos))
    return (float(np.mean(errors)) if errors else float("nan")), len(errors)
