"""Reliability: nothing a client sends can hold the server, and faults leave stored work intact.

Fast, on the tiny model, loopback only, every loop bounded. Requests are raw gRPC messages
(``gradalign_client.proto``), as a hostile client would send them. The figures the README's
"Reliability" section quotes are printed with ``-s`` (``pytest tests/test_reliability.py -s``).
"""

from __future__ import annotations

import concurrent.futures
import math
import time

import grpc
import pytest

pytest.importorskip("torch")

from service_setup import QUESTION, _idle  # noqa: E402

from gradalign_client import Client  # noqa: E402
from gradalign_client.proto import pb, pb_grpc  # noqa: E402
from gradalign_server import ServiceLimits, create_server  # noqa: E402

INVALID, NOT_FOUND, EXHAUSTED = "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"
OK_Q = dict(id="q1", text="what is 1 + 2 ?", answer="3", verifier="regex")


def question(**fields) -> pb.Question:
    values = {**OK_Q, **fields}
    extra = values.pop("extra", {"verifier_options": {"pattern": r"\b3\b"}})
    message = pb.Question(**values)
    if extra is not None:
        message.extra.update(extra)
    return message


def build(settings=None, **fields) -> pb.BuildTreeRequest:
    q = fields.pop("question", None)
    request = pb.BuildTreeRequest(question=q if q is not None else question(), **fields)
    for key, value in (settings or {}).items():
        setattr(request.settings, key, value)
    return request


def score(tree_ids, analysis=None, **fields) -> pb.ScoreTeacherRequest:
    request = pb.ScoreTeacherRequest(tree_ids=tree_ids, **fields)
    for key, value in (analysis or {}).items():
        setattr(request.analysis, key, value)
    return request


def stream(tree_ids, **fields) -> pb.StreamAlignmentsRequest:
    return pb.StreamAlignmentsRequest(tree_ids=tree_ids, **fields)


TREE = "<a stored tree>"  # replaced by the id of a tree the module builds
# (rpc, request, expected status, text the details must hold)
BAD_INPUTS = [
    ("BuildTree", pb.BuildTreeRequest(), INVALID, "question=None: required"),
    ("BuildTree", build(question=question(id="")), INVALID, "question.id"),
    ("BuildTree", build(question=question(text="  ")), INVALID, "question.text"),
    ("BuildTree", build(question=question(answer="")), INVALID, "question.answer"),
    ("BuildTree", build(question=question(id="x" * 300)), INVALID, "question.id='300 characters': at most 256"),
    ("BuildTree", build(question=question(text="w " * 100_001)), INVALID, "question.text='200002 characters'"),
    ("BuildTree", build(question=question(solution="s" * 200_001)), INVALID, "question.solution"),
    ("BuildTree", build(question=question(choices=["a"] * 27, answer="A")), INVALID, "at most 26"),
    ("BuildTree", build(question=question(choices=["a", "b"], answer="C")), INVALID, "question.answer='C'"),
    ("BuildTree", build(question=question(verifier="nope")), INVALID, "unknown verifier"),
    ("BuildTree", build(question=question(extra={})), INVALID, "regex.pattern=None: required option is missing"),
    ("BuildTree", build(question=question(extra={"verifier_options": "x"})), INVALID, "verifier_options='x'"),
    ("BuildTree", build(question=question(extra={"verifier_options": [1, 2]})), INVALID, "verifier_options"),
    ("BuildTree", build(question=question(extra={"verifier_options": {"pattern": r"(a)\1"}})), INVALID, "RE2"),
    ("BuildTree", build(question=question(extra={"verifier_options": {"pattern": "("}})), INVALID, "RE2"),
    ("BuildTree", build(question=question(extra={"verifier_options": {"pattern": "x", "bad": 1}})), INVALID, "bad"),
    ("BuildTree", build(question=question(verifier="numeric", answer="many", extra={})), INVALID, "answer='many'"),
    ("BuildTree", build(question=question(extra={"big": "x" * 200_001})), INVALID, "question.extra"),
    ("BuildTree", build({"num_rollouts": 0}), INVALID, "settings.num_rollouts=0"),
    ("BuildTree", build({"num_rollouts": 5000}), INVALID, "settings.num_rollouts=5000"),
    ("BuildTree", build({"temperature": -1.0}), INVALID, "settings.temperature=-1.0"),
    ("BuildTree", build({"temperature": math.nan}), INVALID, "settings.temperature=nan"),
    ("BuildTree", build({"top_p": 2.0}), INVALID, "settings.top_p=2.0"),
    ("BuildTree", build({"max_new_tokens": 0}), INVALID, "settings.max_new_tokens=0"),
    ("BuildTree", build({"max_new_tokens": 2000}), INVALID, "more than the student's context of 512 tokens"),
    ("BuildTree", build(question=question(text="one two " * 300)), INVALID, "more than the student's context"),
    ("BuildTree", build({"candidate_top_k": 0}), INVALID, "settings.candidate_top_k=0"),
    ("BuildTree", build({"continuations": 10**6}), INVALID, "settings.continuations=1000000"),
    ("BuildTree", build({"screen_min_success": 0.8, "screen_max_success": 0.2}), INVALID, "screen_max_success"),
    ("BuildTree", build({"priority": "loudest"}), INVALID, "settings.priority='loudest'"),
    ("BuildTree", build({"interval": "bayes"}), INVALID, "settings.interval='bayes'"),
    ("BuildTree", build({"min_token_prob": 1.0}), INVALID, "settings.min_token_prob=1.0"),
    ("BuildTree", build(seed=2**63), INVALID, "seed=9223372036854775808"),
    ("BuildTree", build(target_teachers=[""]), INVALID, "target_teachers=''"),
    ("BuildTree", build(target_teachers=["x" * 200]), INVALID, "target_teachers"),
    ("BuildTree", build(target_teachers=["nobody"]), NOT_FOUND, "unknown teacher 'nobody'"),
    ("BuildTree", build({"max_continuations": 10_000_000}), EXHAUSTED, "exceeds the server's limit"),
    ("ScoreTeacher", score([]), INVALID, "tree_ids=[]: at least one tree id is required"),
    ("ScoreTeacher", score([""]), INVALID, "tree_ids='': not a tree id"),
    ("ScoreTeacher", score(["t" * 200]), INVALID, "not a tree id"),
    ("ScoreTeacher", score([f"t{i}" for i in range(10_001)]), INVALID, "'10001 ids': at most 10000"),
    ("ScoreTeacher", score(["0" * 64]), NOT_FOUND, "unknown tree"),
    ("ScoreTeacher", score([TREE], teachers=["nobody"]), NOT_FOUND, "unknown teacher 'nobody'"),
    ("ScoreTeacher", score([TREE], methods=["kl3"]), INVALID, "methods='kl3': unknown method"),
    ("ScoreTeacher", score([TREE], confidence=1.5), INVALID, "confidence=1.5"),
    ("ScoreTeacher", score([TREE], confidence=0.0), INVALID, "confidence=0.0"),
    ("ScoreTeacher", score([TREE], {"jsd_beta": 2.0}), INVALID, "analysis.jsd_beta=2.0"),
    ("ScoreTeacher", score([TREE], {"bootstrap_samples": 10**6}), INVALID, "analysis.bootstrap_samples=1000000"),
    ("ScoreTeacher", score([TREE], {"bootstrap_unit": "token"}), INVALID, "analysis.bootstrap_unit='token'"),
    ("ScoreTeacher", score([TREE], {"teacher_temperature": 0.0}), INVALID, "analysis.teacher_temperature=0.0"),
    ("ScoreTeacher", score([TREE], seed=2**63), INVALID, "seed=9223372036854775808"),
    # Validation before lookup: a bad field is INVALID_ARGUMENT even when the tree and teacher are unknown.
    ("ScoreTeacher", score(["0" * 64], teachers=["nobody"], methods=["kl3"]), INVALID, "methods='kl3'"),
    ("StreamAlignments", stream([]), INVALID, "tree_ids=[]"),
    ("StreamAlignments", stream(["0" * 64]), NOT_FOUND, "unknown tree"),
    ("StreamAlignments", stream([TREE], split=99), INVALID, "split=99: unknown split"),
    ("StreamAlignments", stream(["0" * 64], teachers=["nobody"], split=7), INVALID, "split=7"),
    ("StreamAlignments", stream([TREE], min_depth=5, max_depth=2), INVALID, "max_depth=2: must be >= min_depth"),
    ("StreamAlignments", stream([TREE], methods=["kl3"]), INVALID, "methods='kl3'"),
    ("StreamAlignments", stream([TREE], teachers=["nobody"]), NOT_FOUND, "unknown teacher 'nobody'"),
]


@pytest.fixture(scope="module")
def hostile(service_engine, tmp_path_factory):
    """(server, raw stub, tree id of a stored tree) with the token budget the reliability tests assume."""
    db = tmp_path_factory.mktemp("reliability") / "store.sqlite"
    server, port = create_server(
        service_engine, "127.0.0.1:0", db, metrics_port=0, limits=ServiceLimits(max_request_tokens=5_000_000)
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.GradAlignStub(channel)
    tree_id = stub.BuildTree(build(), timeout=60).tree_id
    yield server, stub, tree_id
    channel.close()
    server.stop(grace=1)


def _call(stub, rpc: str, request, timeout: float = 60):
    method = getattr(stub, rpc)
    if rpc == "StreamAlignments":
        return list(method(request, timeout=timeout))
    return method(request, timeout=timeout)


def _with_tree(request, tree_id: str):
    if hasattr(request, "tree_ids") and TREE in request.tree_ids:
        request = type(request).FromString(request.SerializeToString())
        ids = [tree_id if t == TREE else t for t in request.tree_ids]
        del request.tree_ids[:]
        request.tree_ids.extend(ids)
    return request


@pytest.mark.parametrize(
    ("rpc", "request_message", "code", "text"), BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))]
)
def test_bad_input_is_refused_with_its_status_and_names_the_value(hostile, rpc, request_message, code, text):
    server, stub, tree_id = hostile
    generated = server.engine.student.counters.snapshot()["generated_tokens"]
    with pytest.raises(grpc.RpcError) as err:
        _call(stub, rpc, _with_tree(request_message, tree_id))
    assert err.value.code().name == code, err.value.details()
    assert text in err.value.details()
    assert server.engine.student.counters.snapshot()["generated_tokens"] == generated, "refused only after sampling"


def test_the_table_is_large_and_covers_every_rpc():
    assert len(BAD_INPUTS) >= 40
    assert {row[0] for row in BAD_INPUTS} == {"BuildTree", "ScoreTeacher", "StreamAlignments"}


def test_a_backtracking_pattern_cannot_hold_the_server(hostile):
    # (.+)+Z backtracks exponentially in Python's re; the regex verifier runs it in RE2 (linear time).
    server, stub, _ = hostile
    evil = question(id="evil", extra={"verifier_options": {"pattern": "(.+)+Z"}})
    started = time.monotonic()
    future = stub.BuildTree.future(build(question=evil, settings={"max_new_tokens": 60}), timeout=60)
    health = Client(f"127.0.0.1:{server.port}", timeout=5)
    while not future.done():
        assert health.health(timeout=2) == "SERVING"
        time.sleep(0.05)
    assert future.result().summary.rollouts == 3
    print(
        f"\n[reliability] BuildTree with pattern (.+)+Z: {time.monotonic() - started:.2f} s, health answered throughout"
    )
    health.close()


def test_eight_concurrent_clients_get_identical_results_from_one_computation(hostile):
    server, _, _ = hostile
    _idle(server)
    target = f"127.0.0.1:{server.port}"
    q = {**QUESTION, "id": "concurrent"}
    built = server.metrics.value("gradalign_trees_built_total")

    def one_client(i: int):
        with Client(target, timeout=120) as client:
            results = []
            for round_ in range(3):
                tree = client.build_tree(q, seed=41 + round_)
                report = client.score_teacher([tree.tree_id], teachers=["demo"], seed=3)
                records = [r.cosine for r in client.stream_alignments([tree.tree_id], teachers=["demo"])]
                results.append((tree.tree_id, tree.summary.rollouts, report.ranking[0].mean_cosine, records))
            return results

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one_client, range(8)))
    seconds = time.monotonic() - started
    assert all(r == results[0] for r in results)
    assert server.metrics.value("gradalign_trees_built_total") - built == 3, "identical builds were not shared"
    print(f"\n[reliability] 8 clients x 3 rounds (build, score, stream): identical, 3 trees built, {seconds:.1f} s")


def test_identical_concurrent_scoring_is_computed_once(hostile):
    server, stub, _ = hostile
    _idle(server)
    tree_id = stub.BuildTree(build(question=question(id="score-once")), timeout=60).tree_id
    scored = server.metrics.value("gradalign_records_scored_total")
    request = score([tree_id], teachers=["cw"], methods=["forward_kl"])
    futures = [stub.ScoreTeacher.future(request, timeout=60) for _ in range(4)]
    reports = [f.result().report for f in futures]
    assert all(r == reports[0] for r in reports)
    records = list(
        stub.StreamAlignments(stream([tree_id], teachers=["cw"], methods=["forward_kl"], include_skipped=True))
    )
    assert records and server.metrics.value("gradalign_records_scored_total") - scored == len(records), "scored twice"


def test_cancel_latency_during_a_long_prefill_and_the_slot_is_freed(hostile):
    server, stub, _ = hostile
    _idle(server)
    counters = server.engine.student.counters
    # 4096 rollouts of a 440-token prompt: a prefill of 1.8M positions, sliced into short forwards.
    long_q = question(id="long", text="one two " * 200)
    request = build(question=long_q, settings={"num_rollouts": 4096, "max_new_tokens": 8, "max_continuations": 0})
    calls = counters.snapshot()["forward_calls"]
    future = stub.BuildTree.future(request, timeout=120)
    deadline = time.monotonic() + 60
    while counters.snapshot()["forward_calls"] < calls + 2:
        assert time.monotonic() < deadline and not future.done(), "the prefill never started"
        time.sleep(0.005)
    cancelled_at = time.monotonic()
    future.cancel()
    assert server.jobs.queued == 0
    # The slot is free at once: a new request is accepted while the cancelled job winds down.
    assert stub.ListModels(pb.ListModelsRequest(), timeout=5).models
    _idle(server, timeout=10)
    latency = time.monotonic() - cancelled_at
    assert latency < 2.0
    print(f"\n[reliability] cancel during a long prefill: the worker was free after {latency * 1000:.0f} ms")
