"""vLLM backend tests on the tiny random Llama (head size 32, as vLLM's CPU attention needs).

They run in the vLLM virtual environment (``scripts/run_vllm_tests.sh``); the main suite, which has
no vllm, skips the whole module. The HF backend is the reference: same shapes and conventions for
``generate``, the same (exact) numbers for ``score``, which the vLLM backend computes on its own
engine (the module's ``vb`` never loads the transformers twin; one test loads it on a second engine).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402

from gradalign_engine.backends import Backend, BranchRequest, CancelToken  # noqa: E402
from gradalign_engine.backends.hf import HFBackend  # noqa: E402
from gradalign_engine.backends.vllm_backend import VLLMBackend, branch_seed  # noqa: E402
from gradalign_engine.backends.vllm_setup import fitting_model_len, llm_kwargs  # noqa: E402
from gradalign_engine.config import (  # noqa: E402
    AnalysisConfig,
    ModelSpec,
    RolloutConfig,
    RunConfig,
    SamplingConfig,
    TeacherSpec,
)
from gradalign_engine.data import Question  # noqa: E402
from gradalign_engine.errors import Cancelled, ConfigError  # noqa: E402
from gradalign_engine.pipeline import Engine  # noqa: E402

KV_BYTES = 256 * 1024**2
PROMPT = (8, 9, 10, 11, 12)
OTHER = (13, 14, 8)
SAMPLE = dict(temperature=1.0, top_p=1.0, top_k=0)
TEMPERATURES = (1.0, 0.7, 1.6)


def vllm_spec(model_dir) -> ModelSpec:
    return ModelSpec(model=str(model_dir), backend="vllm", device="cpu", vllm_kv_cache_bytes=KV_BYTES)


def tokens(n: int, step: int, start: int = 0) -> tuple[int, ...]:
    """n word tokens of the tiny vocabulary (ids 8..37), in a pattern set by ``step``."""
    return tuple((start + step * k) % 30 + 8 for k in range(n))


def assert_exact(got, want) -> None:
    """Same shapes; probabilities within 1e-4 and log-probabilities within 1e-4 (float32); rows normalised."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == torch.float32
        if len(g) == 0:
            continue
        assert (g.exp() - w.exp()).abs().max().item() <= 1e-4
        torch.testing.assert_close(g, w, rtol=0, atol=1e-4)
        torch.testing.assert_close(torch.logsumexp(g, -1), torch.zeros(len(g)), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def vb(tiny_model_dir):
    backend = VLLMBackend(vllm_spec(tiny_model_dir))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def hb(tiny_model_dir):
    return HFBackend(ModelSpec(model=str(tiny_model_dir), device="cpu"))


def test_info_tokenizer_and_eos_match_the_hf_backend(vb, hb):
    assert isinstance(vb, Backend)
    assert vb.info.backend == "vllm" and vb.info.device == "cpu" and vb.info.dtype == "float32"
    assert vb.info.model_hash == hb.info.model_hash
    assert vb.info.tokenizer_hash == hb.info.tokenizer_hash
    assert vb.info.vocab_size == hb.info.vocab_size == 40
    assert vb.eos_token_ids == hb.eos_token_ids
    assert vb.tokenizer.encode("1 + 2") == hb.tokenizer.encode("1 + 2")


def test_generate_shapes_branch_major_and_eos(vb):
    eos = vb.eos_token_ids
    requests = [
        BranchRequest(prefix=PROMPT, forced=(20, 21, 22), n=8, max_new_tokens=30, seed=1),
        BranchRequest(prefix=OTHER, n=5, max_new_tokens=7, seed=2),
    ]
    out = vb.generate(requests, **SAMPLE)
    assert [len(o) for o in out] == [24, 5]
    ended_early = 0
    for req, samples in zip(requests, out):
        for s in samples:
            assert 1 <= len(s) <= req.max_new_tokens
            assert not any(t in eos for t in s[:-1]), "EOS may only end a completion"
            if len(s) < req.max_new_tokens:
                assert s[-1] in eos, "a completion shorter than the limit ends with (and keeps) EOS"
                ended_early += 1
    assert ended_early > 0
    # Branch-major: samples b*n .. (b+1)*n-1 follow forced[b]; a branch samples the same alone.
    for b, forced in enumerate(requests[0].forced):
        alone = vb.generate([BranchRequest(prefix=PROMPT, forced=(forced,), n=8, max_new_tokens=30, seed=1)], **SAMPLE)
        assert alone[0] == out[0][b * 8 : (b + 1) * 8]


def test_greedy_matches_hf_and_excludes_the_forced_token(vb, hb):
    requests = [
        BranchRequest(prefix=PROMPT, forced=(20, 1, 30), n=2, max_new_tokens=6),
        BranchRequest(prefix=OTHER, n=1, max_new_tokens=5),
        BranchRequest(prefix=(5,), forced=(7,), n=3, max_new_tokens=4),
    ]
    got = vb.generate(requests, temperature=0.0)
    want = hb.generate(requests, temperature=0.0)
    assert got == want
    assert [len(o) for o in got] == [6, 1, 3]
    assert got[0][0] == got[0][1]  # greedy: the n samples of a branch coincide


def test_top_k_one_and_tiny_top_p_are_greedy(vb):
    requests = [BranchRequest(prefix=PROMPT, forced=(20, 21), n=3, max_new_tokens=6, seed=4)]
    greedy = vb.generate(requests, temperature=0.0)
    assert vb.generate(requests, temperature=1.0, top_p=1.0, top_k=1) == greedy
    assert vb.generate(requests, temperature=1.0, top_p=1e-6, top_k=0) == greedy


def test_seeds_reproducible_and_batching_independent(vb):
    a = BranchRequest(prefix=PROMPT, forced=(20, 21), n=4, max_new_tokens=12, seed=11)
    b = BranchRequest(prefix=OTHER, n=4, max_new_tokens=12, seed=12)
    first = vb.generate([a, b], **SAMPLE)
    assert vb.generate([a, b], **SAMPLE) == first
    assert vb.generate([b, a], **SAMPLE) == [first[1], first[0]]
    assert vb.generate([b], **SAMPLE) == [first[1]]
    reseeded = vb.generate([BranchRequest(prefix=OTHER, n=4, max_new_tokens=12, seed=13)], **SAMPLE)
    assert reseeded[0] != first[1]
    assert len({tuple(s) for s in first[1]}) > 1  # the n samples of one branch differ
    assert branch_seed(11, 20) != branch_seed(11, 21) != branch_seed(12, 21)
    assert 0 <= branch_seed(2**62, None, 3) < 2**62


def test_many_seeded_requests_beyond_one_step_token_budget(vb):
    # More prompt tokens than one scheduler step takes (4096 by default): on the CPU a chunked
    # prefill of a seeded request used to fail ("CPU Generator does not use offset").
    prefixes = [tuple((i * 7 + k) % 30 + 8 for k in range(40)) for i in range(60)]
    requests = [BranchRequest(prefix=p, forced=(20, 21), n=2, max_new_tokens=3, seed=i) for i, p in enumerate(prefixes)]
    out = vb.generate(requests, **SAMPLE)
    assert [len(o) for o in out] == [4] * 60
    assert vb.generate(requests[7:8], **SAMPLE) == out[7:8]


def test_zero_new_tokens_or_forced_eos_give_empty_continuations_without_vllm(vb, hb):
    requests = [
        BranchRequest(prefix=PROMPT, forced=(20, 21), n=2, max_new_tokens=0, seed=1),
        BranchRequest(prefix=OTHER, n=3, max_new_tokens=0),
        BranchRequest(prefix=OTHER, forced=(1,), n=2, max_new_tokens=5),
    ]  # 1 is <eos>
    before = vb.counters.snapshot()
    out = vb.generate(requests, **SAMPLE)
    assert out == [[[], [], [], []], [[], [], []], [[], []]]
    assert vb.counters.snapshot() == before
    assert hb.generate(requests, **SAMPLE) == out


def test_counters_count_generated_tokens_and_progress_reaches_the_total(vb):
    before = vb.counters.snapshot()
    reports = []
    requests = [
        BranchRequest(prefix=PROMPT, forced=(20, 1), n=3, max_new_tokens=9, seed=5),  # 1 is <eos>: ends at once
        BranchRequest(prefix=OTHER, n=2, max_new_tokens=30, seed=6),
    ]
    out = vb.generate(requests, progress=lambda done, total: reports.append((done, total)), **SAMPLE)
    after = vb.counters.snapshot()
    assert after["generated_tokens"] - before["generated_tokens"] == sum(len(s) for o in out for s in o)
    assert after["forward_calls"] > before["forward_calls"]
    assert reports and reports[-1] == (8, 8) and all(t == 8 for _, t in reports)
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)  # never goes back


def test_default_scoring_is_exact_on_vllm_without_a_twin(vb, hb):
    long_context = tokens(300, 7)  # longer than a CPU prefix-cache block (128 tokens): prefilled once
    contexts = [PROMPT, OTHER, (5,), long_context, long_context, PROMPT]
    completions = [(20, 21, 22, 1), (9, 10), (6,), (12, 13, 14, 15, 16), (17, 18), ()]
    before = vb.counters.snapshot()["scored_tokens"]
    for temperature in TEMPERATURES:
        got = vb.score(contexts, completions, temperature=temperature)
        assert_exact(got, hb.score(contexts, completions, temperature=temperature))
    assert vb.counters.snapshot()["scored_tokens"] - before == len(TEMPERATURES) * sum(map(len, completions))
    assert vb.scoring == "vllm" and not vb.twin_loaded  # no transformers copy of the weights was loaded


def test_scoring_forwards_a_shared_long_context_once(vb, hb):
    context = tokens(260, 3)
    completions = [tokens(6, 1, start=i) for i in range(4)]
    before = vb.counters.snapshot()["forwarded_tokens"]
    got = vb.score([context] * 4, completions)
    forwarded = vb.counters.snapshot()["forwarded_tokens"] - before
    assert_exact(got, hb.score([context] * 4, completions))
    # Without the prefix cache each request would forward its 266 tokens (1,064 in all).
    assert forwarded < 2 * len(context)


def test_scoring_is_exact_when_the_cache_reaches_into_the_completion(vb, hb):
    # Context (120 tokens) + the completions' shared first 20 tokens fill a CPU cache block. After the
    # first completion is scored, the second finds that block in the scoring cache, so vLLM would not
    # compute the rows of its first completion tokens: the backend must see it and score it again.
    context, shared = tokens(120, 11), tokens(20, 1)
    first, second = shared + (20, 21), shared + (22, 23, 1)
    for completion in (first, second):
        for temperature in (1.0, 0.7):
            got = vb.score([context], [completion], temperature=temperature)
            assert_exact(got, hb.score([context], [completion], temperature=temperature))


def test_twin_fallback_scores_beside_a_live_engine_and_warns(tiny_model_dir, vb, caplog):
    other = VLLMBackend(vllm_spec(tiny_model_dir), scoring="twin")
    try:
        assert not other.twin_loaded  # loaded on the first score() call
        contexts, completions = [list(PROMPT), [5]], [[20, 21, 22, 1], [6, 7, 8]]
        before = other.counters.snapshot()["scored_tokens"]
        with caplog.at_level(logging.WARNING, logger="gradalign_engine.backends.vllm_backend"):
            got = other.score(contexts, completions, temperature=0.7)
        assert any("scoring='twin'" in r.getMessage() and "second copy" in r.getMessage() for r in caplog.records)
        assert other.twin_loaded and isinstance(other.scorer(), HFBackend) and other.scorer().counters is other.counters
        assert other.counters.snapshot()["scored_tokens"] - before == 7
        # Two independent computations (transformers' pass, vLLM's own logits) agree.
        assert_exact(got, vb.score(contexts, completions, temperature=0.7))
        request = [BranchRequest(prefix=PROMPT, n=2, max_new_tokens=5, seed=3)]
        assert other.generate(request, **SAMPLE) == vb.generate(request, **SAMPLE)
    finally:
        other.close()
    assert not other.twin_loaded
    # Closing one in-process engine must leave the other working.
    assert len(vb.generate([BranchRequest(prefix=PROMPT, n=2, max_new_tokens=5, seed=3)], **SAMPLE)[0]) == 2


def test_scoring_and_parallelism_settings_are_checked_before_loading(tiny_model_dir):
    with pytest.raises(ConfigError, match="vllm_scoring"):
        VLLMBackend(vllm_spec(tiny_model_dir), scoring="topk")
    split = ModelSpec(model=str(tiny_model_dir), backend="vllm", vllm_tensor_parallel_size=2)
    with pytest.raises(ConfigError, match="one device"):
        VLLMBackend(split, scoring="twin")
    with pytest.raises(ConfigError, match="vllm_tensor_parallel_size"):
        dataclasses.replace(split, vllm_tensor_parallel_size=0)
    with pytest.raises(ConfigError, match="one device"):
        dataclasses.replace(split, vllm_scoring="twin")


def test_tensor_parallel_size_reaches_vllm_and_the_kv_budget(tiny_model_dir):
    assert llm_kwargs(vllm_spec(tiny_model_dir), "cpu", 256)["tensor_parallel_size"] == 1  # the default
    # A model with 8 KV heads of 32 dimensions over 2 layers: 4 KiB of float32 KV per token on one GPU.
    config = SimpleNamespace(
        max_position_embeddings=1 << 20, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8, head_dim=32
    )
    lengths = {}
    for size in (1, 2, 16):
        spec = ModelSpec(model="m", vllm_kv_cache_bytes=4096 * 1024, vllm_tensor_parallel_size=size)
        assert llm_kwargs(spec, "cuda", 1024)["tensor_parallel_size"] == size
        lengths[size] = fitting_model_len(config, spec)
    # The cache budget is per GPU: split over 2 GPUs it holds twice the tokens; over 16 each keeps one head.
    assert lengths == {1: 1024, 2: 2048, 16: 8192}


class _CancelAfter(CancelToken):
    """Reports cancelled from the k-th look on: cancels in the middle of decoding."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.looks, self.k = 0, k

    @property
    def cancelled(self) -> bool:
        self.looks += 1
        if self.looks >= self.k:
            self.cancel("test")
        return super().cancelled


def test_cancellation_before_and_during_generation(vb):
    requests = [BranchRequest(prefix=PROMPT, forced=(20, 21), n=4, max_new_tokens=40, seed=9)]
    reference = vb.generate(requests, **SAMPLE)
    token = CancelToken()
    token.cancel("stop")
    before = vb.counters.snapshot()
    with pytest.raises(Cancelled):
        vb.generate(requests, cancel=token, **SAMPLE)
    assert vb.counters.snapshot() == before
    midway = _CancelAfter(3)
    with pytest.raises(Cancelled):
        vb.generate(requests, cancel=midway, **SAMPLE)
    assert midway.looks == 3
    # The aborted requests left nothing behind: the engine still gives the same samples.
    assert vb.generate(requests, **SAMPLE) == reference


def test_cancellation_of_scoring_at_every_check_leaves_the_engine_clean(vb, hb):
    contexts, completions = [tokens(200, 13), PROMPT], [(20, 21, 22), (9, 10)]  # a prefill, then a scoring run
    token = CancelToken()
    token.cancel("stop")
    before = vb.counters.snapshot()
    with pytest.raises(Cancelled):
        vb.score(contexts, completions, cancel=token)
    assert vb.counters.snapshot() == before
    outcomes = []
    for k in range(2, 9):
        steps = vb.counters.snapshot()["forward_calls"]
        try:
            assert_exact(vb.score(contexts, completions, cancel=_CancelAfter(k)), hb.score(contexts, completions))
            outcomes.append("done")
        except Cancelled:
            outcomes.append("stepped" if vb.counters.snapshot()["forward_calls"] > steps else "before")
        assert not vb.llm.llm_engine.has_unfinished_requests()  # cancelled requests were aborted
    assert {"before", "stepped", "done"} <= set(outcomes), outcomes
    assert_exact(vb.score(contexts, completions), hb.score(contexts, completions))


def test_requests_beyond_the_context_are_refused(vb):
    with pytest.raises(ValueError, match="exceeds the vLLM context"):
        vb.generate([BranchRequest(prefix=PROMPT, n=1, max_new_tokens=vb.max_model_len)], **SAMPLE)
    with pytest.raises(ValueError, match="exceed the vLLM context"):
        vb.score([PROMPT], [(8,) * vb.max_model_len])


def test_unsupported_specs_are_refused_before_loading(tmp_path, tiny_model_dir):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="not .gguf files"):
        VLLMBackend(ModelSpec(model=str(gguf), backend="vllm"))
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        with pytest.raises(ConfigError, match="CPU-only"):
            VLLMBackend(ModelSpec(model=str(tiny_model_dir), backend="vllm", device="cuda"))


def test_engine_builds_and_scores_a_tree_with_a_vllm_student(tiny_model_dir):
    config = RunConfig(
        student=vllm_spec(tiny_model_dir),
        teachers=(TeacherSpec(name="demo", context="correct_demo"),),
        sampling=SamplingConfig(max_new_tokens=8),
        rollouts=RolloutConfig(num_rollouts=6, continuations=3),
        analysis=AnalysisConfig(bootstrap_samples=50),
    )
    question = Question(id="q1", question="what is 1 + 2 ?", answer="3", solution="1 + 2 = 3 . the answer is 3")
    engine = Engine(config)  # loads the student through load_backend(backend='vllm')
    try:
        assert isinstance(engine.student, VLLMBackend)
        assert engine.receipt()["student"]["backend"] == "vllm"
        tree = engine.build_tree(question)
        assert tree.summary.rollouts == 6 and tree.summary.tokens_generated > 0
        assert tree.continuations, "continuations were sampled"
        for c in tree.continuations:
            assert len(c.tokens) <= 8
        again = engine.build_tree(question)  # same seed, same samples
        assert [r.tokens for r in again.rollouts] == [r.tokens for r in tree.rollouts]
        assert [(c.forced, c.tokens) for c in again.continuations] == [(c.forced, c.tokens) for c in tree.continuations]
        records = engine.score_tree(tree, ["demo"], ["fkl", "jsd"])
        assert len(records) == 2 * len(tree.nodes) > 0
        for r in records:
            assert r.teacher == "demo" and (r.cosine is not None or r.skip_reason is not None)
        assert not engine.student.twin_loaded  # student and self-distillation teacher scored on vLLM
    finally:
        engine.close()
