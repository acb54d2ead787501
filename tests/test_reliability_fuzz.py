"""Property-based fuzz of every request message: no INTERNAL, and the server stays healthy.

Strategies are built from the message descriptors, so a field added to the proto is fuzzed without
a change here. Values mix the plausible (valid questions, known teacher and method names, the id of a
stored tree) with the hostile (empty and huge strings, extreme and non-finite numbers, unknown enum
values, odd extra fields), so that requests get past validation as well as fail it.
"""

from __future__ import annotations

import math

import grpc
import pytest

pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")

from google.protobuf.descriptor import FieldDescriptor as F  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gradalign_client import Client  # noqa: E402
from gradalign_client.proto import pb, pb_grpc  # noqa: E402
from gradalign_server import ServiceLimits, create_server  # noqa: E402

EXAMPLES = 600
WORDS = ["", "x", "numeric", "choice", "yesno", "regex", "exact", "demo", "cw", "forward_kl", "jsd", "minillm"]
WORDS += ["correct", "(.+)+Z", "\\b3\\b", "3", "A", "what is 1 + 2 ?", "\x00", "é" * 3, "rollout", "wilson", "beta"]
STORED_TREE: list[str] = []  # filled by the fixture: the id of a tree the server has

_strings = st.one_of(
    st.sampled_from(WORDS),
    st.text(max_size=24),
    st.builds(lambda n: "w " * n, st.integers(0, 400)),  # long prompts: past the tiny model's 512 positions
    st.just("y" * 250_000),  # past every text limit
)
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), _strings),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.sampled_from(WORDS), children, max_size=3)
    ),
    max_leaves=8,
)
_extra = st.one_of(
    st.none(),
    st.fixed_dictionaries({"verifier_options": st.one_of(st.just({"pattern": "\\b3\\b"}), _json)}),
    st.dictionaries(st.sampled_from(["verifier_options", "summary", "id", "k"]), _json, max_size=3),
)
_SCALARS = {
    F.TYPE_STRING: _strings,
    F.TYPE_BOOL: st.booleans(),
    F.TYPE_DOUBLE: st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.5, 0.95, 1.0])),
    F.TYPE_FLOAT: st.floats(allow_nan=True, allow_infinity=True, width=32),
    F.TYPE_INT32: st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(0, 12)),
    F.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    F.TYPE_UINT32: st.integers(0, 2**32 - 1),
    F.TYPE_UINT64: st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 100)),
}


def _field_values(field):
    if field.message_type is not None and field.message_type.full_name == "google.protobuf.Struct":
        return _extra
    if field.message_type is not None:
        return message_strategy(field.message_type)
    if field.type == F.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-3, 50))
    if field.name in ("tree_ids",):
        return st.one_of(st.sampled_from(["t", "0" * 64, "x" * 200]), st.builds(lambda: STORED_TREE[0]))
    if field.name in ("teachers", "target_teachers"):
        return st.sampled_from(["demo", "cw", "nobody", ""])
    if field.name == "methods":
        return st.sampled_from(["forward_kl", "reverse_kl", "jsd", "single_sample", "minillm", "kl3"])
    return _SCALARS[field.type]


def message_strategy(descriptor):
    """Messages of ``descriptor`` with a random subset of fields set to fuzzed values."""
    fields = {}
    for field in descriptor.fields:
        values = _field_values(field)
        if field.is_repeated:
            fields[field.name] = st.one_of(st.just([]), st.lists(values, max_size=3))
        else:
            fields[field.name] = st.one_of(st.none(), values)
    cls = getattr(pb, descriptor.name)

    def build(values: dict):
        message = cls()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            if value is None or value == []:
                continue
            if field.message_type is not None and field.message_type.full_name == "google.protobuf.Struct":
                getattr(message, name).update(value)
            elif field.message_type is not None and field.is_repeated:
                getattr(message, name).extend(value)
            elif field.message_type is not None:
                getattr(message, name).CopyFrom(value)
            elif field.is_repeated:
                getattr(message, name).extend(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries(fields).map(build)


def _plausible_question():
    """A question that passes validation, so that fuzzed settings reach the engine."""
    return st.builds(
        lambda qid, pattern: pb.Question(id=qid, text="what is 1 + 2 ?", answer="3", verifier="regex"),
        st.text(min_size=1, max_size=8).filter(str.strip),
        st.just(r"\b3\b"),
    ).map(_with_pattern)


def _with_pattern(question: pb.Question) -> pb.Question:
    question.extra.update({"verifier_options": {"pattern": r"\b3\b"}})
    return question


RPCS = {
    "ListModels": message_strategy(pb.ListModelsRequest.DESCRIPTOR),
    "BuildTree": st.one_of(
        message_strategy(pb.BuildTreeRequest.DESCRIPTOR),
        st.tuples(message_strategy(pb.BuildTreeRequest.DESCRIPTOR), _plausible_question()).map(
            lambda pair: _replace_question(*pair)
        ),
    ),
    "ScoreTeacher": message_strategy(pb.ScoreTeacherRequest.DESCRIPTOR),
    "StreamAlignments": message_strategy(pb.StreamAlignmentsRequest.DESCRIPTOR),
}


def _replace_question(request: pb.BuildTreeRequest, question: pb.Question) -> pb.BuildTreeRequest:
    """A valid question and a budget inside the server's limit: the fuzzed settings reach the engine."""
    request.question.CopyFrom(question)
    request.settings.max_continuations = min(max(request.settings.max_continuations, 0), 8)
    request.settings.num_rollouts = (
        min(max(request.settings.num_rollouts, 1), 4) if request.settings.HasField("num_rollouts") else 3
    )
    return request


@pytest.fixture(scope="module")
def fuzzed_server(service_engine, tmp_path_factory):
    db = tmp_path_factory.mktemp("fuzz") / "store.sqlite"
    # A small token budget: fuzzed BuildTrees that pass validation stay a fraction of a second.
    server, port = create_server(service_engine, "127.0.0.1:0", db, limits=ServiceLimits(max_request_tokens=2_000))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.GradAlignStub(channel)
    question = _with_pattern(pb.Question(id="stored", text="what is 1 + 2 ?", answer="3", verifier="regex"))
    small = pb.RolloutSettings(num_rollouts=3, max_continuations=8)
    STORED_TREE[:] = [stub.BuildTree(pb.BuildTreeRequest(question=question, settings=small), timeout=60).tree_id]
    seen: dict[str, int] = {}
    yield server, stub, seen
    channel.close()
    server.stop(grace=1)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_no_request_message_gets_internal_or_unknown(fuzzed_server, data):
    server, stub, seen = fuzzed_server
    rpc = data.draw(st.sampled_from(sorted(RPCS)))
    request = data.draw(RPCS[rpc])
    try:
        response = getattr(stub, rpc)(request, timeout=30)
        if rpc == "StreamAlignments":
            list(response)
        code = "OK"
    except grpc.RpcError as exc:
        code = exc.code().name
        assert code not in ("INTERNAL", "UNKNOWN"), f"{rpc} {request!r:.400}: {code} {exc.details()}"
        assert len(exc.details()) < 2000, "an error message echoed a huge value"
    seen[f"{rpc} {code}"] = seen.get(f"{rpc} {code}", 0) + 1


def test_after_the_fuzz_the_server_is_healthy_and_still_builds(fuzzed_server):
    server, stub, seen = fuzzed_server
    assert sum(seen.values()) >= EXAMPLES, "the fuzz test did not run first"
    assert any(k.endswith(" OK") for k in seen if k.startswith("BuildTree")), seen
    with Client(f"127.0.0.1:{server.port}", timeout=60) as client:
        assert client.health() == "SERVING"
        tree = client.build_tree(
            settings={"max_continuations": 8},
            question={
                "id": "after",
                "question": "what is 1 + 2 ?",
                "answer": "3",
                "verifier": "regex",
                "verifier_options": {"pattern": r"\b3\b"},
            },
        )
        assert tree.summary.rollouts == 3 and not math.isnan(tree.summary.accuracy)
    print("\n[reliability] fuzz outcomes:", dict(sorted(seen.items())))
