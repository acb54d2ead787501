"""Engine unit and integration tests on tiny random-weight models: config, tree, teachers, pipeline, CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradalign_engine.backends import BranchRequest
from gradalign_engine.backends.hf import HFBackend
from gradalign_engine.config import (
    AnalysisConfig, ConfigError, ModelSpec, PromptConfig, RolloutConfig, RunConfig, SamplingConfig, TeacherSpec,
    load_run_config, run_config_from_dict,
)
from gradalign_engine.data import Question
from gradalign_engine.errors import NotFoundError, TokenizerMismatchError
from gradalign_engine.pipeline import Engine, depth_windows
from gradalign_engine.records import AlignmentRecord, SkipReason
from gradalign_engine.tree import Continuation, PrefixCounter, RolloutTree

REPO = Path(__file__).resolve().parents[1]
# The tiny model writes random words: a completion succeeds when it holds the token "3" anywhere (about half
# do), which gives every tree mixed outcomes. A numeric verifier reads random words as no answer at all.
Q = Question(id="q1", question="what is 1 + 2 ?", answer="3", solution="1 + 2 = 3 . the answer is 3", verifier="regex",
             extra={"verifier_options": {"pattern": r"\b3\b"}})


def tiny_config(model_dir, **over) -> RunConfig:
    base = dict(
        student=ModelSpec(model=str(model_dir), device="cpu"),
        teachers=(TeacherSpec(name="demo", context="correct_demo"), TeacherSpec(name="cw", context="correct_and_wrong")),
        sampling=SamplingConfig(max_new_tokens=8),
        rollouts=RolloutConfig(num_rollouts=6, continuations=3),
        analysis=AnalysisConfig(bootstrap_samples=50),
    )
    base.update(over)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(tiny_config(tiny_model_dir))


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(
    "table,key,value,needle",
    [
        ("rollouts", "num_rollouts", 0, "num_rollouts=0"),
        ("rollouts", "min_token_prob", 1.5, "min_token_prob=1.5"),
        ("rollouts", "interval", "normal", "interval='normal'"),
        ("rollouts", "priority", "loud", "priority='loud'"),
        ("sampling", "temperature", -1, "temperature=-1"),
        ("sampling", "top_p", 0, "top_p=0"),
        ("analysis", "jsd_beta", 2, "jsd_beta=2"),
        ("analysis", "methods", ["fkl", "sft"], "methods='sft'"),
        ("student", "dtype", "int3", "dtype='int3'"),
        ("student", "backend", "tgi", "backend='tgi'"),
        ("rollouts", "nodes_per_windw", 2, "rollouts.nodes_per_windw=2"),
    ],
)
def test_bad_config_values_name_field_and_value(table, key, value, needle):
    with pytest.raises(ConfigError) as err:
        run_config_from_dict({table: {key: value}})
    assert needle in str(err.value)


def test_teacher_config_errors_name_the_teacher():
    with pytest.raises(ConfigError, match=r"teachers\[x\]\.context='gossip'"):
        run_config_from_dict({"teachers": [{"name": "x", "context": "gossip"}]})
    with pytest.raises(ConfigError, match=r"teachers\[ext\]\.model"):
        run_config_from_dict({"teachers": [{"name": "ext", "kind": "external"}]})
    with pytest.raises(ConfigError, match="unique"):
        run_config_from_dict({"teachers": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ConfigError, match="unknown placeholders"):
        run_config_from_dict({"teachers": [{"name": "t", "context": "template", "template": "{secret}"}]})


def test_toml_round_trip(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'seed = 5\n[student]\nmodel = "smollm2-135m"\n[rollouts]\nnum_rollouts = 4\n'
        '[analysis]\nmethods = ["fkl", "rkl"]\n[[teachers]]\nname = "demo"\ncontext = "correct_demo"\n'
    )
    cfg = load_run_config(path)
    assert cfg.seed == 5 and cfg.rollouts.num_rollouts == 4
    assert cfg.analysis.methods == ("forward_kl", "reverse_kl")
    assert cfg.teachers[0].name == "demo"
    with pytest.raises(ConfigError, match="file not found"):
        load_run_config(tmp_path / "missing.toml")


def test_depth_windows_grow_exponentially():
    assert depth_windows(1) == [(0, 1)]
    assert depth_windows(10) == [(0, 1), (1, 3), (3, 7), (7, 10)]
    assert depth_windows(0) == []


# ---------------------------------------------------------------- tree
def test_prefix_counter_matches_brute_force():
    import random

    rng = random.Random(0)
    seqs = [([rng.randrange(3) for _ in range(rng.randrange(1, 6))], rng.random() < 0.4, rng.randrange(0, 3)) for _ in range(300)]
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
    reqs = [BranchRequest(prefix=prefix, forced=(10, 11), n=3, max_new_tokens=5, seed=1),
            BranchRequest(prefix=prefix[:-1], n=2, max_new_tokens=4, seed=2)]
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
        ref = torch.log_softmax(logits[len(c) - 1: len(c) + len(y) - 1].float(), -1)
        assert torch.allclose(lp, ref, atol=1e-5)


# ---------------------------------------------------------------- teachers and pipeline
def test_external_teacher_with_other_tokenizer_is_refused(tiny_model_dir, tiny_model_dir_other_tokenizer):
    cfg = tiny_config(tiny_model_dir, teachers=(TeacherSpec(name="big", kind="external", model=ModelSpec(model=str(tiny_model_dir_other_tokenizer), device="cpu")),))
    with pytest.raises(TokenizerMismatchError) as err:
        Engine(cfg)
    msg = str(err.value)
    assert "'big'" in msg and "vocabulary" in msg and "extra" in msg


def test_external_teacher_with_same_tokenizer_scores(tiny_model_dir, tmp_path):
    from conftest import make_tiny_model_dir

    other = make_tiny_model_dir(tmp_path / "teacher", seed=9)  # same vocabulary, other weights
    cfg = tiny_config(tiny_model_dir, teachers=(TeacherSpec(name="ext", kind="external", model=ModelSpec(model=str(other), device="cpu")),))
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
        assert json.dumps(AlignmentRecord.from_dict(json.loads(json.dumps(r.to_dict()))).to_dict()) == json.dumps(r.to_dict())
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


def test_base_rollouts_depend_only_on_what_shapes_them(engine):
    def base(seed: int = 5, **kw):
        return [r.tokens for r in engine.build_tree(Q, rollouts=RolloutConfig(num_rollouts=4, **kw), seed=seed).rollouts]

    reference = base(continuations=2)
    # Continuation settings change the tree (its id) but not its base rollouts: settings compare on the same rollouts.
    assert engine.tree_id(Q, rollouts=RolloutConfig(num_rollouts=4, continuations=2), seed=5) != engine.tree_id(Q, rollouts=RolloutConfig(num_rollouts=4, continuations=3), seed=5)
    assert base(continuations=3, nodes_per_path=1) == reference
    assert base(continuations=2, adaptive_continuations=8, adaptive_batch=2) == reference
    assert base(seed=6, continuations=2) != reference


def test_adaptive_allocation_spends_exactly_its_budget(engine):
    adaptive = engine.build_tree(Q, rollouts=RolloutConfig(num_rollouts=4, continuations=2, adaptive_continuations=40, adaptive_batch=4))
    assert sum(c.adaptive for c in adaptive.continuations) == 40
    # Step 5 is the same as without step 6 (same nodes, same candidates, M each).
    plain = engine.build_tree(Q, rollouts=RolloutConfig(num_rollouts=4, continuations=2))
    fixed = sum(len(n.candidates) * 2 for n in plain.nodes if n.skip_reason is None)
    assert sum(not c.adaptive for c in adaptive.continuations) == fixed
    # Adaptive continuations go only to candidates of analysed nodes (a child of S(u) that step 6
    # forced joins its node's candidates).
    allowed = {(n.rollout_index, n.depth, c) for n in adaptive.nodes if n.skip_reason is None for c in n.candidates}
    assert all((c.rollout_index, c.depth, c.forced) in allowed for c in adaptive.continuations if c.adaptive)


def test_adaptive_allocation_plans_children_seen_in_passing(engine):
    # A child of S(u) that no node forced, reached only by sequences passing through, enters the
    # scored g* with its few incidental visits: step 6 must be able to spend on it, and then records it
    # among the node's forced candidates.
    rcfg = RolloutConfig(num_rollouts=4, continuations=2)
    scfg, seed, targets = engine.config.sampling, engine.config.seed, engine._targets(None)
    tree = engine.build_tree(Q, rollouts=rcfg)
    node_rows: dict = {}
    nodes = engine._choose_nodes(tree, rcfg, scfg, seed, targets, None, node_rows)
    node = next(n for n in nodes if 1 <= n.depth <= scfg.max_new_tokens - 3)
    base = tree.rollouts[node.rollout_index]
    row = node_rows[(None, node.rollout_index, node.depth)]
    eos = set(engine.student.eos_token_ids)
    passing = max((t for t in range(row.shape[0]) if t not in node.candidates and t not in eos), key=lambda t: float(row[t]))
    # Forced one step earlier, then sampled through ``passing``: counted toward it, not forced there.
    for ok in (False, True):
        tree.continuations.append(Continuation(node.rollout_index, node.depth - 1, base.tokens[node.depth - 1], [passing], ok))
    assert {c.token_id: c.visits for c in tree.counter().children(base.tokens[: node.depth])}[passing] == 2
    engine._adaptive(tree, [node], RolloutConfig(num_rollouts=4, continuations=2, adaptive_continuations=200, adaptive_batch=4),
                     scfg, seed, None, targets, node_rows)
    extra = [c for c in tree.continuations if c.adaptive]
    assert sum(1 for _ in extra) == 200
    assert any(c.forced == passing and c.depth == node.depth for c in extra)
    assert passing in node.candidates


def test_adaptive_allocation_without_target_teachers_spreads_its_budget(engine):
    # No teacher to aim at: the extra budget is spread over the open children, least visited first.
    tree = engine.build_tree(Q, rollouts=RolloutConfig(num_rollouts=4, continuations=2, adaptive_continuations=24, adaptive_batch=4),
                             target_teachers=[])
    extra = [c for c in tree.continuations if c.adaptive]
    assert len(extra) == 24
    assert len({(c.rollout_index, c.depth, c.forced) for c in extra}) >= 2


def test_analyze_cli_writes_records_and_summary(tiny_model_dir, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'seed = 1\n[student]\nmodel = "{tiny_model_dir}"\ndevice = "cpu"\n[sampling]\nmax_new_tokens = 6\n'
        '[rollouts]\nnum_rollouts = 4\ncontinuations = 2\n[analysis]\nbootstrap_samples = 20\n'
        '[[teachers]]\nname = "demo"\ncontext = "correct_demo"\n'
    )
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(Question(id=f"q{i}", question=f"what is {i} + 1 ?", answer=str(i + 1), solution=f"{i} + 1 = {i + 1}").to_dict()) for i in range(3)))
    out, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    proc = subprocess.run(
        [sys.executable, "-m", "gradalign_engine.cli", "--config", str(cfg), "--dataset", str(data), "--limit", "2",
         "--out", str(out), "--summary", str(summary)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert "receipt" in lines[0] and lines[0]["receipt"]["student"]["model_hash"]
    assert {r["question_id"] for r in lines[1:]} == {"q0", "q1"}
    s = json.loads(summary.read_text())
    assert s["receipt"]["config"]["seed"] == 1 and len(s["trees"]) == 2 and s["report"]["ranking"]
    bad = subprocess.run([sys.executable, "-m", "gradalign_engine.cli", "--config", str(cfg), "--dataset", str(tmp_path / "nope.jsonl")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
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


def test_configuration_reference_is_current():
    proc = subprocess.run([sys.executable, "scripts/gen_config_docs.py", "--check"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_example_config_loads():
    cfg = load_run_config(REPO / "examples" / "smollm2.toml")
    assert {t.context for t in cfg.teachers} == {"correct_demo", "correct_and_wrong", "summary"}


def test_a_reference_the_verifier_cannot_read_is_refused_before_any_sampling(engine):
    from gradalign_engine.verifiers import VerifierError

    before = engine.student.counters.snapshot()
    for bad in (Question(id="n1", question="how many ?", answer="abc"),
                Question(id="c1", question="pick one", answer="maybe", verifier="choice"),
                Question(id="y1", question="is it ?", answer="maybe", verifier="yesno")):
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
