"""Every setting says what it affects, and the cache keys follow those tags (not a hand-kept list).

A new config field without an ``affects`` tag fails here; so does a records setting that does not change
the records' key, or a report-only setting that does.
"""

from __future__ import annotations

import dataclasses

import pytest

from gradalign_engine import config, identity, study
from gradalign_engine.config_fields import AFFECTS

CONFIG_CLASSES = [
    config.ModelSpec,
    config.SamplingConfig,
    config.PromptConfig,
    config.RolloutConfig,
    config.AnalysisConfig,
    config.TeacherSpec,
    config.RunConfig,
    study.TaskSpec,
    study.StudyConfig,
]


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_every_setting_is_tagged_with_what_it_affects(cls):
    untagged = [f.name for f in dataclasses.fields(cls) if f.metadata.get("affects") not in AFFECTS]
    assert not untagged, f"{cls.__name__}: tag {untagged} with affects=... ({', '.join(AFFECTS)})"
    assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), cls.__name__


def _key(analysis: config.AnalysisConfig) -> str:
    return identity.records_key({"name": "t"}, "hash", config.PromptConfig(), analysis)


def test_records_key_follows_the_records_tags_only():
    base = config.AnalysisConfig()
    changed = {
        "jsd_beta": 0.3,
        "minillm_gamma": 0.5,
        "minillm_length_norm": False,
        "minillm_single_step": False,
        "teacher_temperature": 2.0,
        "min_ideal_norm": 0.5,
        "bootstrap_samples": 7,
        "bootstrap_unit": "question",
        "include_prefix_ids": True,
        "methods": ("jsd",),
    }
    for f in dataclasses.fields(config.AnalysisConfig):
        other = dataclasses.replace(base, **{f.name: changed[f.name]})
        moved = _key(other) != _key(base)
        assert moved == (f.metadata["affects"] == "records"), f.name
    report = lambda a: identity.report_key(["t1"], {"t": "k"}, ["jsd"], a, 0, 0.95)[0]  # noqa: E731
    assert report(dataclasses.replace(base, bootstrap_samples=7)) != report(base)
    assert report(dataclasses.replace(base, include_prefix_ids=True)) == report(base)
