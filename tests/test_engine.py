"""Engine unit and integration tests on tiny random-weight models: depth windows, the prefix counter,
the Hugging Face backend, teachers, the pipeline (build, score, skip reasons, screening) and the CLI.
Config tests live in test_config.py, the adaptive-allocation tests in test_adaptive.py."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from engine_helpers import REPO, Q, tiny_config

from gradalign_engine.backends import BranchRequest, CancelToken
from gradalign_engine.backends.hf import HFBackend
from gradalign_engine.config import ConfigError, ModelSpec, RolloutConfig, TeacherSpec
from gradalign_engine.data import Question
from gradalign_engine.errors import Cancelled, NotFoundError, TokenizerMismatchError
from gradalign_engine.pipeline import Engine, depth_windows
from gradalign_engine.records import AlignmentRecord, SkipReason
from gradalign_engine.tree import PrefixCounter, RolloutTree


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(tiny_config(tiny_model_dir))


# ---------------------------------------------------------------- pipeline depth windows
def test_depth_windows_grow_exponentially():
    assert depth_windows(1) == [(0, 1)]
    assert depth_windows(10) == [(0, 1), (1, 3), (3, 7), (7, 10)]
    assert depth_windows(0) == []


# ---------------------------------------------------------------- tree
def test_prefix_counter_matches_brute_force():
    import random

    rng = random.Random(0)
    seqs = [
        ([rng.randrange(3) for _ in range(rng.randrange(1, 6))], rng.random() < 0.4, rng.randrange(0, 3))
        for _ in range(300)
    ]
    counter = PrefixCounter(seqs)
    for prefix in [(), (0,), (1, 2), (2, 0, 1)]:
        depth = len(prefix)
        kids = {c.token_id: (c.visits, c.successes) for c in counter.children(prefix)}
        expect: dict[int, list[int]] = {}
        for toks, ok, free in seqs:
            if tuple(toks[:depth]) == prefix and len(toks) > depth and free <= depth + 1:
                e = expect.setdefault(toks[depth], [0, 0])
                e[0] += 1
                e[1] += ok
        assert kids == {k: tuple(v) for k, v in expect.items()}


def test_deeper_forced_continuations_do_not_count_for_shallower_children():
    counter = PrefixCounter()
    counter.add([5, 6, 7], True, free_from=0)  # base rollout
    counter.add([5, 6, 9], True, free_from=2)  # forced at depth 1 (token 6), sampled after
    counter.add([5, 8, 1], False, free_from=2)  # forced at depth 1 (token 8)
    # Node at depth 0: child 5 counts only the base rollout; the others were forced deeper.
    assert {c.token_id: c.visits for c in counter.children(())} == {5: 1}
    # Node at depth 1: every sequence counts for its child.
    assert {c.token_id: c.visits for c in counter.children((5,))} == {6: 2, 8: 1}


# ---------------------------------------------------------------- backend
def test_hf_backend_branches_and_seeds(tiny_model_dir):
    backend = HFBackend(ModelSpec(model=str(tiny_model_dir), device="cpu"))
    prefix = tuple(backend.tokenizer("<|user|> what is 1 + 2 ? <|end|> <|assistant|>")["input_ids"])
    reqs = [
        BranchRequest(prefix=prefix, forced=(10, 11), n=3, max_new_tokens=5, seed=1),
        BranchRequest(prefix=prefix[:-1], n=2, max_new_tokens=4, seed=2),
    ]
    out = backend.generate(reqs, temperature=1.0)
    assert [len(o) for o in out] == [6, 2]
    assert all(len(s) <= 5 for s in out[0]) and all(len(s) <= 4 for s in out[1])
    eos = backend.eos_token_ids
    for s in out[0] + out[1]:
        assert all(t not in eos for t in s[:-1])  # generation stops at the first EOS
    # Per-request seeds: the same request gives the same samples alone or batched with others.
    alone = backend.generate([reqs[1]], temperature=1.0)
    assert alone[0] == out[1]
    # Scoring is the exact distribution the sampler used: greedy == argmax of score.
    greedy = backend.generate([BranchRequest(prefix=prefix, n=1, max_new_tokens=6, seed=0)], temperature=0.0)[0][0]
    lp = backend.score([list(prefix)], [greedy])[0]
    assert lp.argmax(-1).tolist() == greedy
    assert torch.allclose(lp.exp().sum(-1), torch.ones(len(greedy)), atol=1e-5)


def test_score_matches_unbatched_forward(tiny_model_dir):
    backend = HFBackend(ModelSpec(model=str(tiny_model_dir), device="cpu"))
    ctxs = [[3, 4, 10, 11], [3, 12]]
    comps = [[13, 14], [15, 16, 17, 18]]
    got = backend.score(ctxs, comps)
    for c, y, lp in zip(ctxs, comps, got):
        with torch.no_grad():
            logits = backend.model(torch.tensor([c + y])).logits[0]
        ref = torch.log_softmax(logits[len(c) - 1 : len(c) + len(y) - 1].float(), -1)
        assert torch.allclose(lp, ref, atol=1e-5)


def test_sliced_forwards_equal_one_forward_and_stop_between_slices(tiny_model_dir):
    # Slices of 8 positions: every score and prefill below runs as several forwards over a KV cache.
    whole = HFBackend(ModelSpec(model=str(tiny_model_dir), device="cpu"))
    sliced = HFBackend(
        ModelSpec(model=str(tiny_model_dir), device="cpu", forward_slice_tokens=8),
        model=whole.model,
        tokenizer=whole.tokenizer,
    )
    ctxs = [[3, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], [3, 12]]
    comps = [[13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23], [15, 16, 17, 18]]
    for got, want in zip(sliced.score(ctxs, comps, temperature=0.7), whole.score(ctxs, comps, temperature=0.7)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert sliced.counters.snapshot()["forward_calls"] == 6  # 2 rows x 24 positions, in slices of 4 columns
    request = [BranchRequest(prefix=tuple(ctxs[0] * 3), n=3, max_new_tokens=6, seed=5)]
    assert sliced.generate(request, temperature=0.0) == whole.generate(request, temperature=0.0)

    class CancelOnSecondLook(CancelToken):
        looks = 0

        @property
        def cancelled(self) -> bool:
            self.looks += 1
            if self.looks == 2:
                self.cancel("test")
            return super().cancelled

    token, before = CancelOnSecondLook(), sliced.counters.snapshot()["forward_calls"]
    with pytest.raises(Cancelled):
        sliced.score([ctxs[0] * 4], [comps[0] * 4], cancel=token)
    assert sliced.counters.snapshot()["forward_calls"] - before == 1  # stopped after the first slice


# ---------------------------------------------------------------- teachers and pipeline
def test_external_teacher_with_other_tokenizer_is_refused(tiny_model_dir, tiny_model_dir_other_tokenizer):
    cfg = tiny_config(
        tiny_model_dir,
        teachers=(
            TeacherSpec(
                name="big", kind="external", model=ModelSpec(model=str(tiny_model_dir_other_tokenizer), device="cpu")
            ),
        ),
    )
    with pytest.raises(TokenizerMismatchError) as err:
        Engine(cfg)
    msg = str(err.value)
    assert "'big'" in msg and "vocabulary" in msg and "extra" in msg


def test_external_teacher_with_same_tokenizer_scores(tiny_model_dir, tmp_path):
    from conftest import make_tiny_model_dir

    other = make_tiny_model_dir(tmp_path / "teacher", seed=9)  # same vocabulary, other weights
    cfg = tiny_config(
        tiny_model_dir,
        teachers=(TeacherSpec(name="ext", kind="external", model=ModelSpec(model=str(other), device="cpu")),),
    )
    eng = Engine(cfg)
    tree = eng.build_tree(Q)
    recs = eng.score_tree(tree, ["ext"], ["fkl"])
    assert recs and any(r.cosine is not None for r in recs)
    assert {m.kind for m in eng.list_models()} == {"student", "external"}


def test_build_and_score_records_are_consistent(engine):
    tree = engine.build_tree(Q)
    s = tree.summary
    assert s.rollouts == 6 and s.nodes_analysed == len(tree.nodes) and s.continuations == len(tree.continuations)
    assert s.tokens_generated > 0
    recs = engine.score_tree(tree, ["demo", "cw"], ["fkl", "rkl", "jsd", "single_sample", "minillm"])
    assert len(recs) == len(tree.nodes) * 2 * 5
    for r in recs:
        assert r.teacher in ("demo", "cw")
        support = [c for c in r.candidates if c.in_support]
        assert len(r.ideal) == len(support) == len(r.distill)
        assert all(c.visits >= 2 for c in support)
        # A distinct node: the sampled children are exactly the tokens its base rollouts took there.
        assert {c.token_id for c in r.candidates if c.sampled} == {tree.rollouts[i].tokens[r.depth] for i in r.rollouts}
        assert r.sampled_token_id == tree.rollouts[r.rollout_index].tokens[r.depth]
        if r.cosine is None:
            assert r.skip_reason in vars(SkipReason).values()
        else:
            assert -1 - 1e-9 <= r.cosine <= 1 + 1e-9 and r.skip_reason is None
            assert abs(sum(c.p_renorm for c in support) - 1) < 1e-9
        # Round trip (compared as JSON: a teacher without a context at the node has q = NaN, and NaN != NaN).
        assert json.dumps(AlignmentRecord.from_dict(json.loads(json.dumps(r.to_dict()))).to_dict()) == json.dumps(
            r.to_dict()
        )
    # The tree round-trips through JSON and scores identically.
    again = RolloutTree.from_dict(json.loads(json.dumps(tree.to_dict())))
    assert [r.to_dict() for r in engine.score_tree(again, ["demo"], ["fkl"])] == [
        r.to_dict() for r in recs if r.teacher == "demo" and r.method == "forward_kl"
    ]


def test_unknown_teacher_and_method_are_named(engine):
    tree = engine.build_tree(Q, rollouts=RolloutConfig(num_rollouts=2, continuations=2))
    with pytest.raises(NotFoundError, match="'nobody'"):
        engine.score_tree(tree, ["nobody"], ["fkl"])
    with pytest.raises(ConfigError, match="'sft'"):
        engine.score_tree(tree, ["demo"], ["sft"])


def test_budget_exhaustion_is_recorded_not_dropped(engine):
    tree = engine.build_tree(Q, rollouts=RolloutConfig(num_rollouts=4, continuations=2, max_continuations=10))
    skipped = [n for n in tree.nodes if n.skip_reason == SkipReason.BUDGET_EXHAUSTED]
    assert skipped and tree.summary.nodes_skipped == len(skipped)
    assert sum(len(n.candidates) * 2 for n in tree.nodes if n.skip_reason is None) <= 10
    recs = engine.score_tree(tree, ["demo"], ["fkl"])
    assert sum(r.skip_reason == SkipReason.BUDGET_EXHAUSTED for r in recs) == len(skipped)


def test_correct_and_wrong_without_a_wrong_rollout_is_skipped_with_reason(engine):
    tree = engine.build_tree(Q, rollouts=RolloutConfig(num_rollouts=3, continuations=2))
    for r in tree.rollouts:  # pretend the student always succeeds: there is no wrong demonstration
        r.correct = True
    recs = engine.score_tree(tree, ["cw"], ["fkl"])
    assert recs and all(r.skip_reason == SkipReason.NO_CONTEXT for r in recs)


def test_target_teachers_and_tree_ids(engine):
    a = engine.tree_id(Q)
    assert a == engine.tree_id(Q)
    assert a != engine.tree_id(Q, seed=1)
    assert a != engine.tree_id(Q, target_teachers=["demo"])
    assert a != engine.tree_id(Q, rollouts=RolloutConfig(num_rollouts=3))
    with pytest.raises(NotFoundError):
        engine.tree_id(Q, target_teachers=["ghost"])


def test_analyze_cli_writes_records_and_summary(tiny_model_dir, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'seed = 1\n[student]\nmodel = "{tiny_model_dir}"\ndevice = "cpu"\n[sampling]\nmax_new_tokens = 6\n'
        "[rollouts]\nnum_rollouts = 4\ncontinuations = 2\n[analysis]\nbootstrap_samples = 20\n"
        '[[teachers]]\nname = "demo"\ncontext = "correct_demo"\n'
    )
    data = tmp_path / "d.jsonl"
    data.write_text(
        "\n".join(
            json.dumps(
                Question(
                    id=f"q{i}", question=f"what is {i} + 1 ?", answer=str(i + 1), solution=f"{i} + 1 = {i + 1}"
                ).to_dict()
            )
            for i in range(3)
        )
    )
    out, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradalign_engine.cli",
            "--config",
            str(cfg),
            "--dataset",
            str(data),
            "--limit",
            "2",
            "--out",
            str(out),
            "--summary",
            str(summary),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert "receipt" in lines[0] and lines[0]["receipt"]["student"]["model_hash"]
    assert {r["question_id"] for r in lines[1:]} == {"q0", "q1"}
    s = json.loads(summary.read_text())
    assert s["receipt"]["config"]["seed"] == 1 and len(s["trees"]) == 2 and s["report"]["ranking"]
    bad = subprocess.run(
        [sys.executable, "-m", "gradalign_engine.cli", "--config", str(cfg), "--dataset", str(tmp_path / "nope.jsonl")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "nope.jsonl" in bad.stderr


def test_sampler_follows_the_scored_distribution(tiny_model_dir):
    """First tokens of 4,000 samples vs the exact next-token distribution (sampling law check).

    With 4,000 draws the total-variation distance of the empirical law to the truth is about
    sqrt(V / (2 pi n)) ~ 0.04 at most for this vocabulary; 0.08 fails a wrong law, not noise.
    """
    backend = HFBackend(ModelSpec(model=str(tiny_model_dir), device="cpu"))
    prefix = (3, 10, 11)
    out = backend.generate([BranchRequest(prefix=prefix, n=4000, max_new_tokens=1, seed=11)], temperature=0.8)[0]
    counts = torch.bincount(torch.tensor([s[0] for s in out]), minlength=backend.vocab_size).double() / 4000
    truth = backend.score([list(prefix)], [[out[0][0]]], temperature=0.8)[0][0].exp().double()
    assert 0.5 * (counts - truth).abs().sum() < 0.08


def test_a_reference_the_verifier_cannot_read_is_refused_before_any_sampling(engine):
    from gradalign_engine.verifiers import VerifierError

    before = engine.student.counters.snapshot()
    for bad in (
        Question(id="n1", question="how many ?", answer="abc"),
        Question(id="c1", question="pick one", answer="maybe", verifier="choice"),
        Question(id="y1", question="is it ?", answer="maybe", verifier="yesno"),
    ):
        with pytest.raises(VerifierError, match=repr(bad.answer)):
            engine.build_tree(bad)
    assert engine.student.counters.snapshot() == before  # not one token generated or forwarded


def test_screening_keeps_only_questions_with_mixed_success(engine):
    # The verifier never succeeds on this answer: every screening rollout fails, the question gets no nodes.
    hopeless = Question(id="h", question="what is 1 + 2 ?", answer="123456")
    rcfg = RolloutConfig(num_rollouts=6, screen_rollouts=4, continuations=2)
    tree = engine.build_tree(hopeless, rollouts=rcfg)
    s = tree.summary
    assert s.screened_out and (s.screen_rollouts, s.screen_successes) == (4, 0)
    assert len(tree.rollouts) == 4 and not tree.nodes and not tree.continuations
    # A band that admits a zero success rate keeps it, and the screening rollouts are its first base rollouts.
    kept = engine.build_tree(hopeless, rollouts=dataclasses.replace(rcfg, screen_min_success=0.0))
    assert not kept.summary.screened_out and len(kept.rollouts) == 6 and kept.nodes
    assert [r.tokens for r in kept.rollouts[:4]] == [r.tokens for r in tree.rollouts]
    from gradalign_engine.aggregate import build_report

    report = build_report([], engine.config.analysis, trees=[tree.summary, kept.summary])
    assert [(q.question_id, q.rollouts, q.successes, q.success_rate) for q in report.screened_out] == [("h", 4, 0, 0.0)]
