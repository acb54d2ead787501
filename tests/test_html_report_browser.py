"""The HTML report in a real browser: headless chromium opens the page and its self-test reports what it shows.

``#selftest`` makes the page click the last token chip of the rollout it shows and write into the
DOM its counts, the node panel and every console error (tests/browser_helpers.py reads them through
``--dump-dom``). Skipped without a chromium binary unless GRADALIGN_REQUIRE_BROWSER=1 (CI sets it),
which makes a missing browser a failure. GRADALIGN_KEEP_ARTIFACTS=1 copies the screenshot to
tests/artifacts/report.png.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from browser_helpers import find_chromium, screenshot, selftest
from report_fixtures import METHODS, tiny_run
from service_setup import TEACHERS

from gradalign_client.html_report import write_html

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


REQUIRED = os.environ.get("GRADALIGN_REQUIRE_BROWSER") == "1"
if find_chromium() is None and not REQUIRED:  # at import: skipping needs no engine
    pytest.skip(
        "no chromium binary (apt-get install chromium; GRADALIGN_REQUIRE_BROWSER=1 makes this a failure)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def chromium():
    binary = find_chromium()
    if binary is None:
        pytest.fail("GRADALIGN_REQUIRE_BROWSER=1 but no chromium binary: apt-get install chromium")
    return binary


@pytest.fixture(scope="module")
def run(service_engine):
    return tiny_run(service_engine)


@pytest.fixture(scope="module")
def page(run, tmp_path_factory):
    records, summary = run
    return write_html(tmp_path_factory.mktemp("report") / "report.html", records, summary, "tiny run")


def _node_key(r: dict) -> tuple:
    return (r["tree_id"], r["rollout_index"], r["depth"])


def _nodes_through(records: list[dict], tree: str, rollout: int) -> list[tuple]:
    through = {_node_key(r) for r in records if r["tree_id"] == tree and rollout in (r["rollout_indices"] or [])}
    return sorted(through, key=lambda k: k[2])


def _shown(text: str) -> str:
    return "∅" if text == "" else text.replace("\n", "↵").replace("\t", "⇥")


def _p_value(p: float | None) -> str:
    """As the page writes a p-value (JavaScript's toFixed / toExponential)."""
    if p is None:
        return "—"
    if p != 0 and p < 0.001:
        mantissa, exponent = f"{p:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{p:.3f}"


def _signed(x: float) -> str:
    return ("+" if x >= 0 else "") + f"{x:.3f}"


def test_page_renders_without_errors_and_shows_every_section(chromium, run, page):
    records, summary = run
    result, _ = selftest(page)
    assert result["errors"] == [] and "exception" not in result, result
    assert result["options"] == {
        "teacher": list(TEACHERS),
        "method": list(METHODS),
        "question": ["q1", "q2", "q3"],
        "split": ["correct", "incorrect", "mixed"],
    }
    assert result["ranking_rows"] == len(TEACHERS) * len(METHODS) == len(summary["report"]["ranking"])
    assert result["ranking_rows_one_teacher"] == len(METHODS)
    assert result["boxplots"] == len(TEACHERS) * len(METHODS)
    comparisons = {(c["teacher"], c["method"]): c["mann_whitney_p"] for c in summary["report"]["comparisons"]}
    expected_p = [_p_value(comparisons[(t, m)]) for t in TEACHERS for m in METHODS if (t, m) in comparisons]
    assert result["mann_whitney"] == expected_p
    assert result["depth_panels"] == len(METHODS)
    assert result["correlation_rows"] == len({(c["teacher"], c["method"]) for c in summary["report"]["correlations"]})
    assert result["question_rows"] == len({r["tree_id"] for r in records})
    # the last question, its incorrect nodes, the last method: one question row, one box plot per teacher
    shown = [r for r in records if r["question_id"] == "q3" and r["rollout_correct"] is False]
    shown = [r for r in shown if r["method"] == METHODS[-1]]
    assert result["filtered"] == {
        "question_rows": 1,
        "boxplots": len(TEACHERS),
        "records": f"{len(shown)} of {len(records)} records",
    }


def test_token_chips_and_the_node_panel(chromium, run, page):
    records, _ = run
    result, _ = selftest(page)
    tree, rollout, teacher, method = result["tree"], result["rollout"], result["teacher"], result["method"]
    nodes = _nodes_through(records, tree, rollout)
    assert (teacher, method) == (TEACHERS[0], METHODS[0]) and rollout == 0
    assert result["full_text"] is True  # these records carry prefix ids: the completion is shown whole
    assert result["chips"] == len(nodes) and result["chip_depths"] == [k[2] for k in nodes]
    assert result["rollout_buttons"] == len({i for r in records if r["tree_id"] == tree for i in r["rollout_indices"]})

    panel = result["panel"]
    last = nodes[-1]
    assert panel["key"] == "|".join(map(str, last)) and panel["depth"] == last[2] == int(panel["selected_chip"])
    (record,) = [r for r in records if _node_key(r) == last and r["teacher"] == teacher and r["method"] == method]
    assert [row[0] for row in panel["candidates"]] == [_shown(c["token_text"]) for c in record["candidates"]]
    assert [int(row[1]) for row in panel["candidates"]] == [c["token_id"] for c in record["candidates"]]
    assert [row[2] for row in panel["candidates"]] == [f"{c['p']:.3f}" for c in record["candidates"]]
    assert [int(row[6]) for row in panel["candidates"]] == [c["visits"] for c in record["candidates"]]
    if record["cosine"] is None:
        assert panel["cosine"] == f"skipped: {record['skip_reason']}"
    else:
        assert panel["cosine"] == f"cos(g*, d) = {_signed(record['cosine'])}"
    assert f"demonstration {record['demo_source'] or 'none'}" in panel["sources"]
    assert panel["grid_cells"] == len(TEACHERS) * len(METHODS)


def test_chips_in_depth_order_without_prefix_ids(chromium, run, tmp_path):
    records, summary = run
    bare = [dict(r, prefix_token_ids=None) for r in records]
    result, _ = selftest(write_html(tmp_path / "bare.html", bare, None, "no prefixes, no report"))
    assert result["errors"] == [] and "exception" not in result, result
    nodes = _nodes_through(bare, result["tree"], result["rollout"])
    assert result["full_text"] is False and result["chips"] == len(nodes)
    assert result["chip_depths"] == [k[2] for k in nodes]
    assert result["ranking_rows"] == len(TEACHERS) * len(METHODS)  # computed from the records without a report
    assert result["panel"]["depth"] == nodes[-1][2] and result["panel"]["candidates"]


def test_edge_pages_render_without_errors(chromium, run, tmp_path):
    records, _ = run
    raw = {k: v for k, v in records[0].items() if k != "rollout_indices"}  # an older schema: kept whole
    for name, given in [("empty", []), ("raw", [raw, records[1]])]:
        result, _ = selftest(write_html(tmp_path / f"{name}.html", given, None, name))
        assert result["errors"] == [] and "exception" not in result, (name, result)
    assert result["chips"] >= 1 and result["panel"]["candidates"]


def test_token_texts_name_the_prefix_tokens(chromium, run, tmp_path):
    records, _ = run
    ids = {i for r in records for i in r["prefix_token_ids"]} | {r["sampled_token_id"] for r in records}
    known = {c["token_id"] for r in records for c in r["candidates"]}
    named = {i: f"T{i}" for i in ids}
    result, _ = selftest(write_html(tmp_path / "named.html", records, None, "named", token_texts=named))
    assert result["errors"] == [] and result["full_text"] is True, result
    assert "#" not in result["token_line"]
    shown = _nodes_through(records, result["tree"], result["rollout"])[-1]
    (deepest,) = {tuple(r["prefix_token_ids"]) for r in records if _node_key(r) == shown}
    for i in deepest:
        shown_named = re.search(rf"T{i}(?!\d)", result["token_line"]) is not None
        assert shown_named == (i not in known)  # a candidate's own text wins


def test_screenshot(chromium, page, tmp_path):
    png, _ = screenshot(page, tmp_path / "report.png", width=1400, height=2600)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a blank page compresses to a few KB
    if os.environ.get("GRADALIGN_KEEP_ARTIFACTS") == "1":
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copyfile(png, ARTIFACTS / "report.png")
