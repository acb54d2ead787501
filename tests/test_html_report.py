"""`gradalign report` without a browser: the embedded data round-trips, the page fetches nothing, every input.

Records come from the real engine on the tiny model (tests/report_fixtures.py); the browser's view of
the same page is tests/test_html_report_browser.py.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from report_fixtures import METHODS, QUESTION_3, tiny_run
from service_setup import QUESTION, QUESTION_2, TEACHERS

from gradalign_client import html_report
from gradalign_client.cli import main as cli_main
from gradalign_client.html_report import build_html, data_from_html, records_from_html, write_html

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(service_engine):
    return tiny_run(service_engine)


def _without_blob(page: str) -> str:
    return re.sub(r'(<script type="application/json" id="gradalign-data">).*?(</script>)', r"\1\2", page, flags=re.S)


def test_embedded_records_round_trip_exactly(run):
    records, summary = run
    page = build_html(records, summary, title="tiny")
    assert records_from_html(page) == records
    data = data_from_html(page)
    assert data["format"] == html_report.FORMAT and len(data["records"]) == len(records)
    # Stored once per node and once per node x teacher, not once per record.
    nodes = {(r["tree_id"], r["rollout_index"], r["depth"]) for r in records}
    assert len(data["nodes"]) == len(nodes)
    assert len(data["teachers"]) == len({(r["tree_id"], r["rollout_index"], r["depth"], r["teacher"]) for r in records})
    assert all(isinstance(e, list) for e in data["records"])  # every canonical record fits the compact layout
    assert data["report"]["ranking"] == summary["report"]["ranking"] and data["trees"] == summary["trees"]
    assert {r["question_id"] for r in records} == {"q1", "q2", "q3"}
    assert {r["teacher"] for r in records} == set(TEACHERS) and {r["method"] for r in records} == set(METHODS)
    assert all(r["prefix_token_ids"] is not None for r in records)


def test_page_fetches_nothing(run):
    records, summary = run
    records[0]["candidates"][0]["token_text"] = '</script><script src="https://example.com/x.js"></script><!--'
    page = build_html(records, summary, title='a <b>"title"</b>')
    assert records_from_html(page) == records
    assert page.count("</script>") == 3  # prelude, data, report: a token text cannot end the data element
    shell = _without_blob(page)
    assert "http://" not in shell and "https://" not in shell
    assert not re.search(r"<script[^>]*\ssrc=|<link\b|<img\b|<iframe\b|@import|url\((?!#)", shell, re.I)
    assert not re.search(r"\bfetch\(|XMLHttpRequest|WebSocket|EventSource|sendBeacon|import\(", shell)
    assert "default-src 'none'" in shell  # the Content-Security-Policy forbids any load the code might attempt
    assert "<title>a &lt;b&gt;&quot;title&quot;&lt;/b&gt;</title>" in shell


def test_records_outside_the_schema_are_kept_whole():
    other = {"question_id": "q", "tree_id": "t", "depth": 1, "teacher": "a", "method": "m", "cosine": 0.5, "new": [1]}
    page = build_html([other], None, title="x")
    assert records_from_html(page) == [other] and data_from_html(page)["records"] == [{"raw": other}]


def test_record_objects_and_nan_follow_the_canonical_rule(run):
    from gradalign_engine.records import AlignmentRecord

    records, _ = run
    objects = [AlignmentRecord.from_dict(r) for r in records[:4]]
    objects[0].candidates[0].estimate = math.nan
    objects[1].teacher_advantage = math.inf
    back = records_from_html(build_html(objects, None, title="x"))
    assert back[0]["candidates"][0]["estimate"] is None and back[1]["teacher_advantage"] is None
    assert back[2:] == records[2:4]


def test_summary_forms(run):
    records, summary = run
    report = summary["report"]
    study = {"receipt": summary["receipt"], "report": report, "tasks": [{"name": "t", "questions": 3, "report": {}}]}
    study["contexts"] = [{"context": "no_context", "questions": 3, "samples": 9, "accuracy": 0.3}]
    for given, keys in [
        (summary, {"report", "receipt", "trees"}),
        (report, {"report"}),
        (study, {"report", "receipt", "tasks", "contexts"}),
        (None, set()),
    ]:
        data = data_from_html(build_html(records, given, title="x"))
        assert {k for k in ("report", "receipt", "trees", "tasks", "contexts") if k in data} == keys
    assert data_from_html(build_html(records, study, title="x"))["tasks"] == [
        {"name": "t", "questions": 3, "screened_out": None, "kept": None, "base_accuracy": None, "seconds": None}
    ]


def test_token_texts_name_prefix_tokens(run):
    records, _ = run
    data = data_from_html(build_html(records, None, title="x", token_texts={7: "seven", 8: "eight"}))
    assert data["vocab"] == {"7": "seven", "8": "eight"}


def _write_records(path: Path, receipt: dict, records: list[dict]) -> None:
    from gradalign_client.canonical import json_line

    path.write_text("".join(json_line(x) + "\n" for x in [{"receipt": receipt}, *records]), encoding="utf-8")


def test_cli_from_records_and_from_a_study(run, tmp_path, capsys):
    records, summary = run
    _write_records(tmp_path / "records.jsonl", summary["receipt"], records)
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "a" / "report.html"
    args = ["--records", str(tmp_path / "records.jsonl"), "--summary", str(tmp_path / "summary.json")]
    assert html_report.main([*args, "--out", str(out)]) == 0
    page = out.read_text()
    assert records_from_html(page) == records and data_from_html(page)["report"] == summary["report"]
    assert "<title>gradalign report: records.jsonl</title>" in page
    assert f"{len(records)} records" in capsys.readouterr().err

    study = tmp_path / "study"
    study.mkdir()
    _write_records(study / "records.jsonl", summary["receipt"], records)
    (study / "study.json").write_text(json.dumps({"receipt": summary["receipt"], "report": summary["report"]}))
    assert cli_main(["report", "--study", str(study), "--out", str(tmp_path / "s.html"), "--title", "S"]) == 0
    data = data_from_html((tmp_path / "s.html").read_text())
    assert (
        data["title"] == "S"
        and data["report"] == summary["report"]
        and records_from_html((tmp_path / "s.html").read_text()) == records
    )

    assert html_report.main(["--records", str(tmp_path / "nope.jsonl"), "--out", str(out)]) == 1
    assert "nope.jsonl" in capsys.readouterr().err
    assert html_report.main(["--study", str(study), "--summary", "x.json", "--out", str(out)]) == 2


def test_cli_from_a_server_and_vet_html(served, tmp_path):
    server, client = served
    address = f"127.0.0.1:{server.port}"
    trees = [client.build_tree(q).tree_id for q in (QUESTION, QUESTION_2)]
    out = tmp_path / "server.html"
    argv = ["--server", address, "--tree-ids", ",".join(trees), "--teachers", "demo", "--methods", "forward_kl"]
    assert html_report.main([*argv, "--out", str(out)]) == 0
    records, data = records_from_html(out.read_text()), data_from_html(out.read_text())
    assert records and {r["teacher"] for r in records} == {"demo"} and {r["tree_id"] for r in records} == set(trees)
    assert all(r["prefix_token_ids"] is not None for r in records)  # the token view gets whole completions
    assert [e["teacher"] for e in data["report"]["ranking"]] == ["demo"] and data["receipt"]
    assert html_report.main(["--server", "127.0.0.1:1", "--tree-ids", "x", "--out", str(out), "--timeout", "2"]) == 2

    dataset = tmp_path / "d.jsonl"
    dataset.write_text(json.dumps(QUESTION) + "\n" + json.dumps(QUESTION_3) + "\n")
    vet = ["vet", "--server", address, "--dataset", str(dataset), "--teachers", "demo,cw", "--methods", "forward_kl"]
    jsonl, page = tmp_path / "vet.jsonl", tmp_path / "vet.html"
    assert cli_main([*vet, "--quiet", "--out", str(jsonl), "--html", str(page)]) == 0
    kept = [json.loads(line) for line in jsonl.read_text().splitlines()]
    shown = records_from_html(page.read_text())
    assert len(shown) == len(kept) and all(r["prefix_token_ids"] is None for r in kept)  # --out unchanged
    assert [dict(r, prefix_token_ids=None) for r in shown] == kept
    assert data_from_html(page.read_text())["report"]["ranking"]
    assert cli_main([*vet, "--quiet", "--html", str(tmp_path / "only.html")]) == 0
    assert records_from_html((tmp_path / "only.html").read_text()) == shown


def test_write_html_is_the_one_call_for_other_commands(run, tmp_path):
    from gradalign_engine.records import AlignmentRecord

    records, summary = run
    path = write_html(tmp_path / "x" / "run.html", [AlignmentRecord.from_dict(r) for r in records], summary)
    assert path.exists() and records_from_html(path.read_text()) == records
    assert "<title>gradalign report: run</title>" in path.read_text()


def test_report_module_stays_light():
    code = (
        "import sys, gradalign_client.html_report as h; h.build_html([], None, title='x'); "
        "print(','.join(sorted(m for m in ('torch', 'numpy', 'gradalign_engine', 'grpc') if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "client"), "PATH": ""},
        check=True,
    )
    assert out.stdout.strip() == "", f"gradalign_client.html_report imported {out.stdout.strip()}"


def test_assets_are_packaged():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["gradalign_client"]
    assets = sorted(p.name for p in (ROOT / "client" / "gradalign_client" / "report_assets").iterdir())
    assert assets == ["prelude.js", "report.css", "report.html", "report.js"]
    assert "report_assets/*" in patterns


def test_analyze_html_shows_prefixes_while_its_jsonl_stays_as_configured(tiny_model_dir, tmp_path):
    from gradalign_engine.cli import analyze_main

    config = tmp_path / "run.toml"
    config.write_text(
        f'[student]\nmodel = "{tiny_model_dir}"\ndevice = "cpu"\n[sampling]\nmax_new_tokens = 8\n'
        "[rollouts]\nnum_rollouts = 3\nnodes_per_window = 1\nnodes_per_path = 2\ncandidate_top_k = 1\n"
        "continuations = 2\n[analysis]\nbootstrap_samples = 20\nmethods = ['forward_kl']\n"
        '[[teachers]]\nname = "demo"\ncontext = "correct_demo"\n'
    )
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(json.dumps(QUESTION) + "\n" + json.dumps(QUESTION_2) + "\n")
    out, page = tmp_path / "records.jsonl", tmp_path / "run.html"
    argv = [
        "--config",
        str(config),
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        "--summary",
        str(tmp_path / "s.json"),
    ]
    assert analyze_main([*argv, "--quiet", "--html", str(page)]) == 0
    receipt, *kept = [json.loads(line) for line in out.read_text().splitlines()]
    shown = records_from_html(page.read_text())
    assert kept and all(r["prefix_token_ids"] is None for r in kept)  # include_prefix_ids is off in the config
    assert receipt["receipt"]["config"]["analysis"]["include_prefix_ids"] is False
    assert [dict(r, prefix_token_ids=None) for r in shown] == kept
    prefixes = {t for r in shown for t in (r["prefix_token_ids"] or ())}
    assert prefixes, "the report got no prefix tokens"
    vocab = data_from_html(page.read_text())["vocab"]
    assert prefixes <= {int(k) for k in vocab} and all(isinstance(v, str) for v in vocab.values())
    assert "<title>gradalign analyze: d.jsonl</title>" in page.read_text()


def test_study_command_writes_its_files_and_report_on_a_tiny_model(tiny_model_dir, tmp_path):
    from gradalign_engine.cli_study import study_main

    dataset = tmp_path / "d.jsonl"
    dataset.write_text(json.dumps(QUESTION) + "\n" + json.dumps(QUESTION_2) + "\n")
    config = tmp_path / "study.toml"
    config.write_text(
        f'[student]\nmodel = "{tiny_model_dir}"\ndevice = "cpu"\n[sampling]\nmax_new_tokens = 8\n'
        "[rollouts]\nnum_rollouts = 3\nnodes_per_window = 1\nnodes_per_path = 2\ncandidate_top_k = 1\n"
        "continuations = 2\n[analysis]\nbootstrap_samples = 20\nmethods = ['forward_kl']\n"
        '[[teachers]]\nname = "demo"\ncontext = "correct_demo"\n'
        '[study]\ncontext_samples = 1\n[[study.tasks]]\nname = "toy"\ndataset = "d.jsonl"\nquestions = 2\n'
    )
    out, page = tmp_path / "out", tmp_path / "out" / "r.html"
    argv = ["--config", str(config), "--out", str(out), "--quiet"]
    assert study_main([*argv, "--dry-run"]) == 0 and not (out / "study.json").exists()
    assert study_main([*argv, "--html", str(page)]) == 0
    result = json.loads((out / "study.json").read_text())
    assert [t["name"] for t in result["tasks"]] == ["toy"] and result["cost"]["spent"]["generated_tokens"] > 0
    assert "# gradalign study" in (out / "study.md").read_text()
    receipt, *kept = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert kept and all(r["prefix_token_ids"] is None for r in kept)
    assert receipt["receipt"]["config"]["analysis"]["include_prefix_ids"] is False
    shown = records_from_html(page.read_text())
    assert [dict(r, prefix_token_ids=None) for r in shown] == kept
    assert "<title>gradalign study: study</title>" in page.read_text()
