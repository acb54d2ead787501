"""The CLI's one table of exit codes (README "Exit codes"), case by case, and names checked before any work.

0 done (gate passed); 1 the server refused a call or the work failed; 2 bad arguments or input found
before any work, or no server reachable; 3 the gate failed.
"""

from __future__ import annotations

import json
import socket

import pytest

pytest.importorskip("torch")

from service_setup import QUESTION  # noqa: E402

from gradalign_client import cli  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "q.jsonl"
    path.write_text(json.dumps(QUESTION) + "\n")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vet(server, dataset, *extra) -> list[str]:
    return ["vet", "--server", f"127.0.0.1:{server.port}", "--dataset", str(dataset), "--quiet", *extra]


def _trees_built(server) -> float:
    return server.metrics.value("gradalign_trees_built_total")


def test_the_table_itself():
    assert (cli.EXIT_OK, cli.EXIT_ERROR, cli.EXIT_USAGE, cli.EXIT_UNREACHABLE, cli.EXIT_GATE) == (0, 1, 2, 2, 3)


def test_no_command_and_bad_flags_are_usage_errors(capsys):
    assert cli.main([]) == cli.EXIT_USAGE
    with pytest.raises(SystemExit) as exit_:
        cli.main(["vet", "--no-such-flag"])
    assert exit_.value.code == cli.EXIT_USAGE


@pytest.mark.parametrize("server", ["no-such-host.invalid:50051", "127.0.0.1:{free}"])
def test_no_server_at_the_address_exits_2_with_one_line(server, dataset, capsys):
    address = server.format(free=_free_port())
    code = cli.main(["models", "--server", address, "--timeout", "5"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_UNREACHABLE and f"cannot reach a gradalign server at {address}" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "forward_kl,kl3"], "--methods: unknown method 'kl3'"),
        (["--teachers", "demo,nobody"], "unknown teacher 'nobody'"),
        (["--teachers", "demo", "--fail-below", "0", "--fail-teacher", "dmeo"], "unknown teacher 'dmeo'"),
        (["--teachers", "demo", "--fail-below", "0", "--fail-teacher", "cw"], "--fail-teacher 'cw' is not among"),
        (["--methods", "jsd", "--fail-below", "0", "--method-for-gate", "minillm"], "--method-for-gate 'minillm'"),
    ],
)
def test_names_are_checked_before_any_tree_is_built(served, dataset, capsys, extra, message):
    server, _ = served
    built = _trees_built(server)
    assert cli.main(_vet(server, dataset, *extra)) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err
    assert _trees_built(server) == built


def test_an_unreadable_dataset_is_a_usage_error(served, tmp_path, capsys):
    server, _ = served
    assert cli.main(_vet(server, tmp_path / "missing.jsonl")) == cli.EXIT_USAGE
    assert "missing.jsonl" in capsys.readouterr().err


def test_a_call_the_server_refuses_exits_1(served, dataset, capsys):
    server, _ = served
    assert cli.main(_vet(server, dataset, "--set", "num_rollouts=0")) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "settings.num_rollouts=0" in err


def test_the_gate_passes_with_0_and_fails_with_3(served, dataset, capsys):
    server, _ = served
    base = ["--teachers", "demo", "--methods", "forward_kl"]
    assert cli.main(_vet(server, dataset, *base, "--fail-below", "-2")) == cli.EXIT_OK
    assert cli.main(_vet(server, dataset, *base, "--fail-below", "2")) == cli.EXIT_GATE
    assert "gate failed: demo (forward_kl)" in capsys.readouterr().err


def test_dry_run_prints_the_estimate_and_builds_nothing(served, dataset, capsys):
    server, _ = served
    built = _trees_built(server)
    assert cli.main(_vet(server, dataset, "--dry-run")) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "estimate for 1 question(s):" in out and "tok/s" in out
    assert _trees_built(server) == built
