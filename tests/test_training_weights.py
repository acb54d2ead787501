"""`gradalign weights`: the derivation on hand-written records, the two file formats, the CLI, and the
selective-distillation example end to end on records the real engine wrote for the tiny model."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from gradalign_client import training_weights as tw
from gradalign_client import weights_files
from gradalign_client.training_weights import COLUMNS, WeightOptions, WeightsError, derive_rows

ROOT = Path(__file__).resolve().parent.parent
TREE = "t" * 32


def _rec(depth: int, cosine: float | None = 0.5, *, rollouts=(0,), **overrides) -> dict:
    """A minimal record dict, as the JSONL holds it (only the fields the export reads)."""
    record = {
        "question_id": "q1",
        "tree_id": TREE,
        "rollout_index": rollouts[0],
        "rollout_indices": list(rollouts),
        "rollout_correct": False,
        "depth": depth,
        "path_length": 6,
        "normalized_depth": depth / 6,
        "teacher": "demo",
        "method": "forward_kl",
        "cosine": cosine,
        "skip_reason": None if cosine is not None else "too_few_candidates",
        "teacher_advantage": 0.1,
        "sampled_token_id": 10 + depth,
        "candidates": [{"token_id": 10 + depth, "sampled": True}, {"token_id": 99, "sampled": False}],
    }
    record.update(overrides)
    return record


def _weights(records, **options) -> list[float]:
    return [row["weight"] for row in derive_rows(records, WeightOptions(**options))[0]]


def _write_records(path: Path, records, receipt: dict | None = None) -> Path:
    lines = ([json.dumps({"receipt": receipt})] if receipt is not None else []) + [json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- derivation
COSINES = [-0.5, 0.0, 0.25, 0.5, 1.0]


def test_mask_is_one_at_and_above_the_threshold():
    records = [_rec(t, c) for t, c in enumerate(COSINES)]
    assert _weights(records, threshold=0.25) == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert _weights(records) == [0.0, 1.0, 1.0, 1.0, 1.0]  # threshold 0: cos = 0 is kept
    assert _weights(records, threshold=1.0) == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_weight_is_a_clipped_linear_map_of_the_cosine():
    records = [_rec(t, c) for t, c in enumerate(COSINES)]
    assert _weights(records, mode="weight") == [0.0, 0.0, 0.25, 0.5, 1.0]  # max(cos, 0)
    assert _weights(records, mode="weight", threshold=0.25) == pytest.approx([0.0, 0.0, 0.0, 1 / 3, 1.0])
    assert _weights(records, mode="weight", threshold=-1.0) == [0.25, 0.5, 0.625, 0.75, 1.0]  # (cos + 1) / 2


def test_advantage_score_reads_the_teacher_advantage():
    records = [_rec(t, 0.9, teacher_advantage=a) for t, a in enumerate([-0.2, 0.0, 0.05, None])]
    rows, _ = derive_rows(records, WeightOptions(score="advantage", threshold=0.01))
    assert [r["weight"] for r in rows] == [0.0, 0.0, 1.0, 1.0]  # no advantage: skipped, default weight
    assert [r["source"] for r in rows] == ["node", "node", "node", "skipped"]
    assert rows[2]["advantage"] == 0.05 and rows[2]["cosine"] == 0.9


def test_skipped_nodes_take_the_default_or_their_own_weight():
    records = [_rec(0, -0.3), _rec(1, None), _rec(2, 0.8, skip_reason="budget_exhausted")]
    rows, _ = derive_rows(records, WeightOptions())
    assert [(r["source"], r["weight"], r["skip_reason"]) for r in rows] == [
        ("node", 0.0, None),
        ("skipped", 1.0, "too_few_candidates"),
        ("skipped", 1.0, "budget_exhausted"),  # a skip reason wins over a stray cosine
    ]
    assert rows[1]["cosine"] is None
    assert _weights(records, default=0.0) == [0.0, 0.0, 0.0]
    assert _weights(records, default=0.0, skipped=0.5) == [0.0, 0.5, 0.5]


def test_a_shared_node_gives_one_row_per_rollout_through_it():
    shared = _rec(0, 0.7, rollouts=(1, 0, 2), rollout_correct=None, rollouts_correct=1)
    mixed = dict(shared, depth=2, sampled_token_id=12, rollout_indices=[0, 1])
    mixed["candidates"] = [{"token_id": 12, "sampled": True}, {"token_id": 13, "sampled": True}]
    mine = _rec(3, -0.2, rollouts=(2,), rollout_correct=True, sampled_token_id=40)
    rows, facts = derive_rows([shared, mixed, mine], WeightOptions())
    root = [r for r in rows if r["position"] == 0]
    assert [r["rollout"] for r in root] == [0, 1, 2]
    assert {(r["weight"], r["cosine"], r["node_rollouts"]) for r in root} == {(1.0, 0.7, 3)}
    assert [r["token_id"] for r in root] == [10, 10, 10]  # one sampled candidate: every rollout sampled it
    at_two = {r["rollout"]: r["token_id"] for r in rows if r["position"] == 2}
    assert at_two == {1: 12, 0: None}  # two tokens sampled there: only the representative's (rollout 1) is known
    assert {r["rollout"]: r["rollout_correct"] for r in rows} == {0: None, 1: None, 2: True}
    assert facts["records"] == 3


def test_dense_rows_fill_every_other_position_of_each_known_rollout():
    # rollout 0 (length 6) is a representative; rollout 1's length (4) is known only from the shared
    # node's normalized_depth, (2/6 + 2/4) / 2; rollout 2 lies only on the root: its length is unknown.
    root = _rec(0, 0.4, rollouts=(0, 1, 2), normalized_depth=0.0)
    shared = _rec(2, -0.9, rollouts=(0, 1), normalized_depth=(2 / 6 + 2 / 4) / 2)
    assert tw.rollout_lengths([root, shared]) == {(TREE, 0): 6, (TREE, 1): 4}
    rows, facts = derive_rows([root, shared], WeightOptions(dense=True, default=0.25))
    by = {(r["rollout"], r["position"]): r for r in rows}
    assert sorted(p for (x, p) in by if x == 0) == list(range(6))
    assert sorted(p for (x, p) in by if x == 1) == list(range(4))
    assert sorted(p for (x, p) in by if x == 2) == [0]  # unknown length: only its node row
    assert facts["rollouts_without_length"] == 1
    assert (by[(0, 1)]["source"], by[(0, 1)]["weight"], by[(0, 1)]["token_id"]) == ("default", 0.25, None)
    assert (by[(1, 2)]["source"], by[(1, 2)]["weight"], by[(1, 2)]["cosine"]) == ("node", 0.0, -0.9)
    assert by[(1, 3)]["source"] == "default" and by[(1, 3)]["cosine"] is None
    assert [r["weight"] for r in derive_rows([root, shared], WeightOptions())[0]] == [1.0, 0.0, 1.0, 0.0, 1.0]


def test_length_recovery_refuses_a_non_integer_solution():
    shared = _rec(2, 0.1, rollouts=(0, 1), normalized_depth=(2 / 6 + 2 / 4.5) / 2)
    assert tw.rollout_lengths([shared]) == {(TREE, 0): 6}


def test_selection_names_teachers_methods_and_trees():
    records = [_rec(0), _rec(0, teacher="cw"), _rec(1, method="reverse_kl")]
    with pytest.raises(WeightsError, match=r"teacher=None: the records hold 2 \(cw, demo\): name one with --teacher"):
        derive_rows(records, WeightOptions())
    with pytest.raises(WeightsError, match=r"teacher='nope': no records of this teacher .* present: cw, demo"):
        derive_rows(records, WeightOptions(teacher="nope", method="fkl"))
    with pytest.raises(WeightsError, match=r"method='jsd': no records .* present: forward_kl, reverse_kl"):
        derive_rows(records, WeightOptions(teacher="demo", method="gkd"))
    rows, facts = derive_rows(records, WeightOptions(teacher="demo", method="rkl"))
    assert facts["method"] == "reverse_kl" and [r["position"] for r in rows] == [1]
    two_trees = [_rec(0), _rec(1, tree_id="u" * 32)]
    with pytest.raises(WeightsError, match=r"question 'q1' has records from 2 trees"):
        derive_rows(two_trees, WeightOptions())
    assert len(derive_rows(two_trees, WeightOptions(trees=("u" * 32,)))[0]) == 1
    with pytest.raises(WeightsError, match="two demo x forward_kl records cover this token"):
        derive_rows([_rec(0), _rec(0)], WeightOptions())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mode": "soft"}, "mode='soft': must be one of mask, weight"),
        ({"score": "kl"}, "score='kl': must be one of cosine, advantage"),
        ({"threshold": 1.5}, r"threshold=1.5: must be a number in \[-1, 1\]"),
        ({"mode": "weight", "threshold": 1.0}, r"threshold=1.0: must be a number in \[-1, 1\)"),
        ({"threshold": float("nan")}, "threshold=nan"),
        ({"default": 2.0}, r"default=2.0: must be a number in \[0, 1\]"),
        ({"skipped": -0.1}, "skipped=-0.1"),
        ({"method": "sft"}, "method='sft': unknown method; choose from forward_kl, reverse_kl"),
        ({"teacher": ""}, "teacher=''"),
        ({"dense": "yes"}, "dense='yes'"),
    ],
)
def test_options_name_the_bad_value(options, message):
    with pytest.raises(WeightsError, match=message):
        WeightOptions(**options)


# ---------------------------------------------------------------------------------------------- files
def _rows_for_files() -> tuple[dict, list[dict]]:
    records = [
        _rec(0, 0.4, rollouts=(0, 1), normalized_depth=0.0),
        _rec(2, None, rollouts=(1,), rollout_correct=True, teacher_advantage=None),
        _rec(3, -1.0),
    ]
    rows, facts = derive_rows(records, WeightOptions(dense=True, mode="weight"))
    return tw._header(WeightOptions(dense=True, mode="weight"), facts, rows, None, "0" * 64), rows


def _check_types(rows):
    for row in rows:
        assert set(row) == {name for name, _, _ in COLUMNS}
        for name, kind, nullable in COLUMNS:
            value = row[name]
            if value is None:
                assert nullable, name
            else:
                assert type(value) is weights_files._PY_TYPES[kind], (name, value)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_file_round_trip_keeps_rows_and_types(tmp_path, fmt):
    header, rows = _rows_for_files()
    assert {r["source"] for r in rows} == {"node", "skipped", "default"}
    path = tmp_path / f"w.{fmt}"
    tw.write_weights(path, header, rows, fmt)
    header_back, rows_back = tw.read_weights(path)
    assert rows_back == rows and header_back == json.loads(json.dumps(header))
    _check_types(rows_back)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        assert [(f.name, str(f.type), f.nullable) for f in schema] == [
            (n, {"string": "string", "int32": "int32", "float64": "double", "bool": "bool"}[t], null)
            for n, t, null in COLUMNS
        ]


def test_weight_map_keys_by_question_and_rollout():
    _, rows = _rows_for_files()
    wmap = tw.weight_map(rows)
    assert wmap[("q1", 0)][0] == 0.4 and wmap[("q1", 1)][2] == 1.0 and wmap[("q1", 0)][3] == 0.0
    assert sorted(wmap[("q1", 0)]) == list(range(6))


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch, capsys):
    records = _write_records(tmp_path / "r.jsonl", [_rec(0)])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    assert tw.main([str(records), "--out", str(tmp_path / "w.parquet")]) == 2
    assert "pip install 'gradalign[parquet]'" in capsys.readouterr().err
    assert not (tmp_path / "w.parquet").exists()


# ---------------------------------------------------------------------------------------------- the CLI
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradalign_client.cli", "weights", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "client"), "PATH": ""},
        timeout=60,
    )


def test_cli_writes_weights_and_refuses_bad_inputs(tmp_path):
    receipt = {"gradalign": "0.1.0", "student": {"name": "m", "model_hash": "ab", "tokenizer_hash": "cd", "x": 1}}
    records = _write_records(tmp_path / "r.jsonl", [_rec(0, 0.2), _rec(1, -0.2), _rec(1, teacher="cw")], receipt)
    out = tmp_path / "w.jsonl"
    done = _cli(str(records), "--teacher", "demo", "--method", "fkl", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "2 rows (2 node) for 1 question(s), teacher demo, forward_kl, mask of cosine" in done.stderr
    header, rows = tw.read_weights(out)
    assert [r["weight"] for r in rows] == [1.0, 0.0]
    assert header["source"]["student"] == {"name": "m", "model_hash": "ab", "tokenizer_hash": "cd"}
    assert header["default"] == 1.0 and header["mode"] == "mask" and header["rows_by_source"]["node"] == 2
    bad = {
        ("--teacher", "nope"): "teacher='nope': no records of this teacher in the records; present: cw, demo",
        ("--teacher", "demo", "--method", "sft"): "method='sft': unknown method",
        ("--teacher", "demo", "--method", "jsd"): "method='jsd': no records of this method",
        (): "teacher=None: the records hold 2 (cw, demo): name one with --teacher",
        ("--teacher", "demo", "--threshold", "2"): "threshold=2.0",
    }
    for extra, message in bad.items():
        done = _cli(str(records), "--out", str(tmp_path / "x.jsonl"), *extra)
        assert done.returncode == 2 and message in done.stderr, (extra, done.stderr)
    done = _cli(str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x.jsonl"))
    assert done.returncode == 2 and "missing.jsonl" in done.stderr and "cannot read" in done.stderr
    (tmp_path / "junk.jsonl").write_text('{"receipt": {}}\nnot json\n')
    done = _cli(str(tmp_path / "junk.jsonl"), "--out", str(tmp_path / "x.jsonl"))
    assert done.returncode == 2 and "junk.jsonl:2" in done.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_the_export_imports_no_heavy_module(tmp_path):
    records = _write_records(tmp_path / "r.jsonl", [_rec(0)])
    code = (
        "import sys; from gradalign_client.training_weights import main; "
        f"assert main([{str(records)!r}, '--out', {str(tmp_path / 'w.jsonl')!r}]) == 0; "
        "print(','.join(m for m in ('torch', 'numpy', 'gradalign_engine', 'pyarrow') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "client"), "PATH": ""},
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------- end to end
def _example():
    spec = importlib.util.spec_from_file_location("selective_distillation", ROOT / "examples/selective_distillation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def engine_run(service_engine, tmp_path_factory):
    """Records of two real trees on the tiny model (receipt first) and the rollouts they were built from."""
    from service_setup import QUESTION, QUESTION_2

    from gradalign_engine.cli import write_records
    from gradalign_engine.data import Question

    out = tmp_path_factory.mktemp("weights")
    records, sequences = [], []
    for q in (QUESTION, QUESTION_2):
        tree = service_engine.build_tree(Question.from_dict(q))
        records += service_engine.score_tree(tree, ["demo", "cw"], ["forward_kl", "reverse_kl"])
        for rollout in tree.rollouts:
            sequences.append(
                {
                    "question_id": tree.question.id,
                    "rollout": rollout.index,
                    "prompt_ids": list(tree.prompt_ids),
                    "completion_ids": list(rollout.tokens),
                }
            )
    write_records(out / "records.jsonl", service_engine.receipt(), records)
    (out / "rollouts.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sequences))
    return out, sequences


def _hand_loss(student, teacher, sequences, wmap, default) -> float:
    """The weighted mean of KL(q || p) over the positive-weight tokens only, written out independently."""
    import torch

    total = weight_sum = 0.0
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([seq["prompt_ids"] + seq["completion_ids"]])
            ls, lt = student(input_ids=ids).logits[0].double(), teacher(input_ids=ids).logits[0].double()
            named = wmap.get((seq["question_id"], seq["rollout"]), {})
            for t in range(len(seq["completion_ids"])):
                w = named.get(t, default)
                if w == 0:
                    continue
                row = len(seq["prompt_ids"]) - 1 + t  # the logits that predict completion token t
                log_q, log_p = torch.log_softmax(lt[row], -1), torch.log_softmax(ls[row], -1)
                total += w * float((log_q.exp() * (log_q - log_p)).sum())
                weight_sum += w
    return total / weight_sum


def test_example_trains_on_exported_weights_and_ignores_zero_weight_tokens(
    engine_run, tiny_model_dir, tmp_path_factory
):
    import torch
    from conftest import make_tiny_model_dir
    from transformers import AutoModelForCausalLM

    out, sequences = engine_run
    weights = out / "weights.parquet"
    export = [str(out / "records.jsonl"), "--teacher", "demo", "--method", "forward_kl", "--out", str(weights)]
    assert tw.main(export + ["--mode", "weight", "--default", "0", "--dense"]) == 0
    header, rows = tw.read_weights(weights)
    assert header["rollouts_without_length"] == 0 and header["rows_by_source"]["default"] > 0
    lengths = {(s["question_id"], s["rollout"]): len(s["completion_ids"]) for s in sequences}
    for key, length in lengths.items():  # dense rows cover exactly each real completion
        assert sorted(r["position"] for r in rows if (r["question_id"], r["rollout"]) == key) == list(range(length))
    teacher_dir = make_tiny_model_dir(tmp_path_factory.mktemp("teacher") / "model", seed=1)
    example = _example()
    argv = ["--weights", str(weights), "--sequences", str(out / "rollouts.jsonl")]
    argv += ["--student", str(tiny_model_dir), "--teacher", str(teacher_dir), "--steps", "2"]
    result = example.main(argv)
    assert result["finite"] and len(result["losses"]) == 2
    assert result["token_ids_checked"] > 0  # the records' token ids match the real rollouts
    assert 0 < result["weighted_tokens"] < result["tokens"], "the tiny run should give both zero and positive weights"
    wmap, default = tw.weight_map(rows), header["default"]
    models = [AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32) for d in (tiny_model_dir, teacher_dir)]
    by_hand = _hand_loss(*models, sequences, wmap, default)
    everywhere = _hand_loss(*models, sequences, {}, 1.0)  # what ignoring the weights would give
    assert result["losses"][0] == pytest.approx(by_hand, rel=1e-4)
    assert abs(everywhere - by_hand) > 100 * abs(result["losses"][0] - by_hand)

    # zero-weight tokens get no gradient, and changing the teacher there changes nothing
    rollouts = example.load_sequences(out / "rollouts.jsonl")
    w = torch.cat([example.token_weights(r, wmap, default) for r in rollouts])
    torch.manual_seed(0)
    student_logits = torch.randn(len(w), 40, requires_grad=True)
    teacher_logits = torch.randn(len(w), 40)
    loss = example.selective_loss(example.per_token_forward_kl(student_logits, teacher_logits), w)
    loss.backward()
    assert torch.all(student_logits.grad[w == 0] == 0) and torch.any(student_logits.grad[w > 0] != 0)
    moved = teacher_logits.clone()
    moved[w == 0] += 5 * torch.randn(int((w == 0).sum()), 40)
    again = example.selective_loss(example.per_token_forward_kl(student_logits, moved), w)
    assert again.item() == loss.item() and math.isfinite(loss.item())
