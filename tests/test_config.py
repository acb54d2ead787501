"""Run configuration: invalid values and teacher specs are refused with the field and value named,
TOML files load (and a missing one is named), the bundled example config loads, and the generated
configuration reference is current."""

from __future__ import annotations

import subprocess
import sys

import pytest
from engine_helpers import REPO

from gradalign_engine.config import ConfigError, load_run_config, run_config_from_dict


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


def test_configuration_reference_is_current():
    proc = subprocess.run(
        [sys.executable, "scripts/gen_config_docs.py", "--check"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_example_config_loads():
    cfg = load_run_config(REPO / "examples" / "smollm2.toml")
    assert {t.context for t in cfg.teachers} == {"correct_demo", "correct_and_wrong", "summary"}
