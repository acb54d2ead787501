"""Exact-enumeration check of the whole engine on a toy model.

The toy student is a 1-layer random Llama over 6 tokens (<eos> <unk> q a b c) writing at most 4
tokens, so the success probability of every prefix can be computed exactly by enumerating all
continuations with the model's own probabilities (in float64, independently of the engine). A
completion succeeds when its text contains "a b". Against that ground truth:

- p and q reported at every node equal the exact next-token distributions;
- the intervals on the Monte Carlo estimates cover the exact success probabilities at their rate;
- alignment converges to the exact alignment as continuations per candidate grow.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch

from gradalign_engine import gradients as G
from gradalign_engine.config import AnalysisConfig, ModelSpec, PromptConfig, RolloutConfig, RunConfig, SamplingConfig, TeacherSpec
from gradalign_engine.data import Question
from gradalign_engine.pipeline import Engine
from gradalign_engine.prompts import render_prompt

MAX_NEW = 4
QUESTION = Question(id="toy", question="q", answer="b", verifier="regex", extra={"verifier_options": {"pattern": "b"}})
TEACHER_CONTEXT = "q a b a b"


def _config(model_dir, *, rollouts: int = 16, continuations: int = 4, interval: str = "wilson", seed: int = 0, dtype: str = "float32") -> RunConfig:
    return RunConfig(
        student=ModelSpec(model=str(model_dir), dtype=dtype, device="cpu"),
        teachers=(TeacherSpec(name="ctx", kind="self", context="template", template=TEACHER_CONTEXT),),
        sampling=SamplingConfig(max_new_tokens=MAX_NEW),
        prompt=PromptConfig(mode="raw"),
        rollouts=RolloutConfig(num_rollouts=rollouts, continuations=continuations, nodes_per_window=2, nodes_per_path=5,
                               candidate_top_k=3, min_token_prob=0.0, max_continuations=10**6, interval=interval),
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

    @functools.lru_cache(maxsize=None)
    def dist(self, prompt: tuple[int, ...], completion: tuple[int, ...]) -> np.ndarray:
        with torch.no_grad():
            logits = self.model(torch.tensor([list(prompt) + list(completion)])).logits[0, -1]
        return torch.softmax(logits, -1).numpy()

    def success(self, completion: tuple[int, ...]) -> bool:
        return "b" in self.tok.decode(list(completion), skip_special_tokens=True)

    @functools.lru_cache(maxsize=None)
    def p_succ(self, completion: tuple[int, ...]) -> float:
        """P(success | the student has written ``completion``), enumerating every continuation."""
        if (completion and completion[-1] == self.eos) or len(completion) >= MAX_NEW:
            return float(self.success(completion))
        probs = self.dist(tuple(self.student_prompt), completion)
        return float(sum(probs[j] * self.p_succ(completion + (j,)) for j in range(len(probs))))


@pytest.fixture(scope="module")
def exact(toy_model_dir) -> ExactToy:
    return ExactToy(toy_model_dir)


@pytest.fixture(scope="module")
def engine(toy_model_dir):
    return Engine(_config(toy_model_dir))


def _prefix(tree, record) -> tuple[int, ...]:
    return tuple(tree.rollouts[record.rollout_index].tokens[: record.depth])


def test_exact_success_probability_is_a_probability(exact):
    root = exact.p_succ(())
    assert 0.05 < root < 0.95, f"toy success rate {root} is degenerate; pick another seed"
    # The recursion is consistent: the root equals the p-weighted mean of its children.
    probs = exact.dist(tuple(exact.student_prompt), ())
    assert math.isclose(root, sum(probs[j] * exact.p_succ((j,)) for j in range(len(probs))), rel_tol=1e-12)


def test_p_and_q_equal_exact_distributions(engine, exact):
    tree = engine.build_tree(QUESTION)
    records = engine.score_tree(tree, ["ctx"], ["forward_kl"])
    assert records and tree.nodes
    checked = 0
    for rec in records:
        prefix = _prefix(tree, rec)
        p = exact.dist(tuple(exact.student_prompt), prefix)
        q = exact.dist(tuple(exact.teacher_prompt), prefix)
        for c in rec.candidates:
            assert c.p == pytest.approx(p[c.token_id], abs=1e-5)
            assert c.q == pytest.approx(q[c.token_id], abs=1e-5)
            checked += 1
        support = [c for c in rec.candidates if c.in_support]
        if len(support) >= 2:
            ps = np.array([p[c.token_id] for c in support])
            qs = np.array([q[c.token_id] for c in support])
            np.testing.assert_allclose([c.p_renorm for c in support], ps / ps.sum(), atol=1e-5)
            np.testing.assert_allclose([c.q_renorm for c in support], qs / qs.sum(), atol=1e-5)
            # The distillation vector is the closed form on the exact renormalised distributions.
            np.testing.assert_allclose(rec.distill, qs / qs.sum() - ps / ps.sum(), atol=1e-5)
    assert checked > 20


@pytest.mark.parametrize("interval,nominal,floor", [("wilson", 0.95, 0.90), ("beta", 0.95, 0.93)])
def test_intervals_cover_exact_success_probabilities(toy_model_dir, exact, interval, nominal, floor):
    """Across trees with different seeds, each child's interval holds the exact P_succ(u.j).

    About 1,000 (child, interval) pairs; the floor leaves room for Wilson's known under-coverage at
    small n and for the correlation of children within one tree. A biased estimator (e.g. one that
    counts continuations forced deeper along the same path) falls well below it.
    """
    hits = total = 0
    engine = Engine(_config(toy_model_dir, interval=interval, rollouts=8, continuations=3))
    for seed in range(8):
        tree = engine.build_tree(QUESTION, seed=seed)
        for rec in engine.score_tree(tree, ["ctx"], ["forward_kl"]):
            prefix = _prefix(tree, rec)
            for c in rec.candidates:
                if c.visits == 0:
                    continue
                truth = exact.p_succ(prefix + (c.token_id,))
                hits += c.ci_low - 1e-12 <= truth <= c.ci_high + 1e-12
                total += 1
    assert total > 300
    coverage = hits / total
    print(f"{interval} coverage {coverage:.3f} over {total}")
    assert coverage >= floor, f"{interval} coverage {coverage:.3f} over {total} intervals (nominal {nominal})"


def _alignment_error(engine, exact, seed: int) -> tuple[float, int]:
    tree = engine.build_tree(QUESTION, seed=seed)
    errors = []
    for rec in engine.score_tree(tree, ["ctx"], ["reverse_kl"]):
        support = [c for c in rec.candidates if c.in_support]
        if rec.cosine is None or len(support) < 2:
            continue
        prefix = _prefix(tree, rec)
        p = np.array([c.p_renorm for c in support])
        v_exact = np.array([exact.p_succ(prefix + (c.token_id,)) for c in support])
        exact_cos = G.cosine(G.ideal_gradient(p, v_exact), np.array(rec.distill))
        if exact_cos is not None:
            errors.append(abs(rec.cosine - exact_cos))
    return float(np.mean(errors)), len(errors)


def test_alignment_converges_to_exact_alignment(toy_model_dir, exact):
    means = []
    for m in (2, 8, 64):
        engine = Engine(_config(toy_model_dir, continuations=m, rollouts=8))
        errs = [_alignment_error(engine, exact, seed) for seed in range(3)]
        means.append(float(np.mean([e for e, _ in errs])))
        assert all(n > 5 for _, n in errs)
    print("mean |cos - exact cos| at M=2, 8, 64:", means)
    assert means[2] < means[1] < means[0], means
    assert means[2] < 0.6 * means[0], means


def test_same_config_same_records(toy_model_dir):
    a = Engine(_config(toy_model_dir, seed=7))
    b = Engine(_config(toy_model_dir, seed=7))
    ta, tb = a.build_tree(QUESTION), b.build_tree(QUESTION)
    assert ta.tree_id == tb.tree_id
    ra = [r.to_dict() for r in a.score_tree(ta, ["ctx"], ["forward_kl", "jsd"])]
    rb = [r.to_dict() for r in b.score_tree(tb, ["ctx"], ["forward_kl", "jsd"])]
    assert ra == rb
    other = Engine(_config(toy_model_dir, seed=8)).build_tree(QUESTION)
    assert other.tree_id != ta.tree_id
    assert [r.tokens for r in other.rollouts] != [r.tokens for r in ta.rollouts]


def test_bf16_numbers_stay_close_to_float32(toy_model_dir, exact):
    """bf16 (an option for speed) perturbs p by its rounding; measured here against exact float64."""
    engine = Engine(_config(toy_model_dir, dtype="bfloat16", seed=1))
    tree = engine.build_tree(QUESTION)
    worst = 0.0
    for rec in engine.score_tree(tree, ["ctx"], ["forward_kl"]):
        p = exact.dist(tuple(exact.student_prompt), _prefix(tree, rec))
        worst = max(worst, max(abs(c.p - p[c.token_id]) for c in rec.candidates))
    assert worst < 0.05, worst
    # ... and it is not float32: the bound above is loose on purpose, the exact test is the float32 one.
    assert worst > 1e-6
