"""The README and the docs say only what the code does: metric names, command-line flags, exit codes.

Every ``gradalign_*`` metric name in the docs is one the server exports; every ``--flag`` written after
``gradalign <command>`` is in that command's ``--help``; the exit-code table matches the CLI's constants.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from gradalign_client import cli  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "DEVELOPERS.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMANDS = ("vet", "health", "models", "serve", "analyze", "study", "demo", "export", "report", "weights")
_COMMAND = re.compile(r"gradalign (" + "|".join(COMMANDS) + r")\b(.*)")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
_METRIC = re.compile(r"\bgradalign_[a-z_]+")
_NOT_METRICS = ("gradalign_engine", "gradalign_client", "gradalign_server", "gradalign_pb")


def _documented_flags() -> dict[str, set[tuple[str, str]]]:
    """command -> {(flag, where)} from every line that runs ``gradalign <command>`` (and its continuations)."""
    found: dict[str, set[tuple[str, str]]] = {}
    for doc in DOCS:
        command = None
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            match = _COMMAND.search(line)
            if match:
                command, rest = match.group(1), match.group(2)
            elif command and re.match(r"\s+\[?--", line):  # a continuation line of the command above
                rest = line
            else:
                command = None
                continue
            rest = rest.split("`", 1)[0] if "`" in line and not line.startswith("    ") else rest
            for flag in _FLAG.findall(rest):
                found.setdefault(command, set()).add((flag, f"{doc.name}:{n}"))
    return found


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_documented_flag_exists(command, capsys):
    flags = _documented_flags().get(command, set())
    try:
        text = _help(command, capsys)
    except ModuleNotFoundError as exc:  # a command whose optional extra is not installed here
        pytest.skip(f"gradalign {command}: {exc}")
    missing = sorted(f"{flag} ({where})" for flag, where in flags if flag not in text and flag != "--help")
    assert not missing, f"gradalign {command} has no such flags: {missing}"


def test_the_docs_name_commands_with_flags_at_all():
    flags = _documented_flags()
    assert {"vet", "serve", "analyze"} <= set(flags) and sum(len(v) for v in flags.values()) >= 30


def test_every_documented_metric_is_exported(service_engine):
    from prometheus_client import generate_latest

    from gradalign_server import create_server

    server, _ = create_server(service_engine, "127.0.0.1:0")
    try:
        exported = generate_latest(server.metrics.registry).decode()
    finally:
        server.stop(grace=0)
    names = set(re.findall(r"^# (?:HELP|TYPE) (gradalign_[a-z_]+)", exported, re.M))
    names |= set(re.findall(r"^(gradalign_[a-z_]+)", exported, re.M))
    documented = {
        (m, doc.name) for doc in DOCS for m in _METRIC.findall(doc.read_text()) if not m.startswith(_NOT_METRICS)
    }
    unknown = sorted(f"{m} ({where})" for m, where in documented if m not in names)
    assert len(documented) >= 10 and not unknown, unknown


def test_the_exit_code_table_in_the_readme_is_the_cli_s():
    text = (ROOT / "README.md").read_text()
    table = dict(re.findall(r"^\| (\d+) \| ([^|]+)\|", text, re.M))
    assert table.keys() >= {"0", "1", "2", "3"}
    assert int("2") == cli.EXIT_USAGE == cli.EXIT_UNREACHABLE and int("3") == cli.EXIT_GATE and cli.EXIT_ERROR == 1
    assert "unknown" in table["2"] and "below" in table["3"]


# A config error quoted in the docs, "`field=value: message` (from `[section] ...`)", is what loading
# that value in that section prints.
_CONFIG_ERROR = re.compile(r"`([a-z_]+)=([^:`]+): ([^`]+)` \(from `\[([a-z_]+)\]")


def test_every_quoted_config_error_is_the_code_s():
    pytest.importorskip("torch")
    from gradalign_engine.config import run_config_from_dict
    from gradalign_engine.errors import ConfigError

    quoted = [(doc.name, m.groups()) for doc in DOCS for m in _CONFIG_ERROR.finditer(doc.read_text())]
    assert quoted, "no config error quoted in the docs: the pattern no longer matches the README's example"
    for where, (field, value, message, section) in quoted:
        with pytest.raises(ConfigError) as err:
            run_config_from_dict({section: {field: int(value) if value.lstrip("-").isdigit() else value}})
        assert str(err.value) == f"{field}={value}: {message}", where
