"""`gradalign study`: the paper's analyses on a real model, as one command.

For each task of a study config (a data set and how many of its questions), every question is
screened (base rollouts with mixed success are kept, docs/method.md), gets a tree, and every teacher
is scored on it. The study then reports, as JSON and Markdown:
(a) in-context accuracy of the student with no context and with each self-distillation context (the
    paper's context table), from fresh samples at the study's temperature;
(b) alignment per teacher x method x split with intervals, and the incorrect-vs-correct tests;
(c) Spearman correlations of alignment with KL, JS, L2, cos(p, q) and normalised depth;
(d) the teacher ranking with intervals;
plus the screening counts, n per split, timings and the receipt. ``--survey`` instead samples a few
rollouts per question for several data sets and temperatures: the numbers that justify choosing
tasks whose success is mixed.

Knows the engine's public surface, files and argparse; the numbers come from ``aggregate``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .aggregate import Report, build_report
from .backends import BranchRequest
from .config import ConfigError, RunConfig, run_config_from_dict
from .config_fields import setting
from .data import Question, bundled_dataset_path, load_questions
from .pipeline import Engine, derive_seed
from .prompts import render_prompt
from .records import AlignmentRecord
from .stats import wilson_interval

__all__ = ["TaskSpec", "StudyConfig", "load_study_config", "run_study", "survey", "NO_CONTEXT"]

NO_CONTEXT = "no_context"
Say = Callable[[str], None]


@dataclass(frozen=True)
class TaskSpec:
    """One data set of the study."""

    name: str = setting(help="Name of the task in the tables.", affects="study")
    dataset: str = setting(help="Bundled data set name (e.g. 'study_boolq') or a JSONL path.", affects="study")
    questions: int = setting(20, "Questions taken from the start of the data set.", affects="study")

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("study.tasks.name", self.name, "must be a non-empty string")
        if not isinstance(self.questions, int) or self.questions < 1:
            raise ConfigError(f"study.tasks[{self.name}].questions", self.questions, "must be an integer >= 1")

    def load(self, root: Path | None = None) -> list[Question]:
        path = Path(self.dataset)
        if not path.suffix:
            path = bundled_dataset_path(self.dataset)
        elif not path.is_absolute() and root is not None:
            path = root / path
        return load_questions(path, limit=self.questions)


@dataclass(frozen=True)
class StudyConfig:
    """The [study] table: tasks and the in-context accuracy pass."""

    tasks: tuple[TaskSpec, ...] = setting((), "The data sets ([[study.tasks]] tables).", affects="study")
    context_samples: int = setting(4, "(a): samples per question and context.", affects="study")
    headline_half_width: float = setting(0.1, "Target half-width of the incorrect - correct interval.", affects="study")

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("study.tasks", [], "name at least one task ([[study.tasks]])")
        if not isinstance(self.context_samples, int) or self.context_samples < 0:
            raise ConfigError("study.context_samples", self.context_samples, "must be an integer >= 0")


def load_study_config(path: str | Path) -> tuple[StudyConfig, RunConfig]:
    """A study TOML: a run config plus a [study] table."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", str(path), "file not found")
    data = tomllib.loads(path.read_text())
    study = dict(data.pop("study", {}) or {})
    tasks = tuple(TaskSpec(**t) for t in study.pop("tasks", []) or [])
    known = {f.name for f in dataclasses.fields(StudyConfig)} - {"tasks"}
    unknown = sorted(set(study) - known)
    if unknown:
        raise ConfigError(
            f"study.{unknown[0]}", study[unknown[0]], f"unknown setting; known: {', '.join(sorted(known | {'tasks'}))}"
        )
    return StudyConfig(tasks=tasks, **study), run_config_from_dict(data)


# --------------------------------------------------------------------------------------------------
# (a) in-context accuracy
# --------------------------------------------------------------------------------------------------


def _context_prompts(engine: Engine, tree) -> dict[str, list[int] | None]:
    """The student's prompt with no context and with each self-distillation teacher's context.

    The samples here are new answers, not a scored rollout, so no rollout needs leaving out.
    """
    prompts: dict[str, list[int] | None] = {NO_CONTEXT: list(tree.prompt_ids)}
    for name, teacher in engine.teachers.items():
        if teacher.is_self:
            prompts[name] = teacher.prompt_ids(tree, set())[0]
    return prompts


def in_context_counts(engine: Engine, tree, samples: int, seed: int) -> dict[str, tuple[int, int]]:
    """(successes, samples) per context for one question; contexts that cannot be built are absent."""
    scfg = dataclasses.replace(engine.config.sampling, **tree.settings["sampling"])
    prompts = {k: p for k, p in _context_prompts(engine, tree).items() if p is not None}
    names = list(prompts)
    requests = [
        BranchRequest(
            prefix=tuple(prompts[k]),
            n=samples,
            max_new_tokens=scfg.max_new_tokens,
            seed=derive_seed(seed, tree.tree_id, "in-context", k),
        )
        for k in names
    ]
    outs = engine.student.generate(requests, temperature=scfg.temperature, top_p=scfg.top_p, top_k=scfg.top_k)
    counts = {}
    for name, completions in zip(names, outs):
        ok = sum(engine.verify(tree.question, tokens, scfg.max_new_tokens).correct for tokens in completions)
        counts[name] = (ok, len(completions))
    return counts


def context_table(counts: Sequence[dict[str, tuple[int, int]]]) -> list[dict[str, Any]]:
    """Pooled accuracy per context with a Wilson interval (questions that have every context)."""
    rows = []
    names = sorted({k for c in counts for k in c}, key=lambda k: (k != NO_CONTEXT, k))
    for name in names:
        ok = sum(c[name][0] for c in counts if name in c)
        n = sum(c[name][1] for c in counts if name in c)
        low, high = wilson_interval(ok, n) if n else (math.nan, math.nan)
        rows.append(
            {
                "context": name,
                "questions": sum(name in c for c in counts),
                "samples": n,
                "accuracy": ok / n if n else math.nan,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------------------------------


@dataclass
class TaskResult:
    name: str
    questions: int = 0
    screened_out: int = 0
    trees: list[dict[str, Any]] = field(default_factory=list)
    contexts: list[dict[str, tuple[int, int]]] = field(default_factory=list)
    records: list[AlignmentRecord] = field(default_factory=list)
    seconds: float = 0.0


def _run_task(engine: Engine, task: TaskSpec, study: StudyConfig, root: Path | None, say: Say, bar=None) -> TaskResult:
    result = TaskResult(name=task.name)
    started = time.perf_counter()
    questions = task.load(root)
    teachers, methods = [t.name for t in engine.config.teachers], list(engine.config.analysis.methods)
    counters = engine.student.counters
    for n, question in enumerate(questions, 1):
        label = f"{task.name} {question.id}"

        def progress(stage, done, total, label=label):
            if bar is not None:
                bar.stage(label, stage, done, total, counters.snapshot()["generated_tokens"])

        tree = engine.build_tree(question, progress=progress)
        summary = dataclasses.asdict(tree.summary)
        result.trees.append(summary)
        result.questions += 1
        s = tree.summary
        if s.screened_out:
            result.screened_out += 1
            note = f"{label}: screened out ({s.screen_successes}/{s.screen_rollouts} correct)"
        else:
            result.records.extend(engine.score_tree(tree, teachers, methods, progress=progress))
            if study.context_samples:
                result.contexts.append(in_context_counts(engine, tree, study.context_samples, engine.config.seed))
            note = (
                f"{label}: {s.correct}/{s.rollouts} correct, {s.nodes_analysed} nodes, {s.continuations} "
                f"continuations, {s.seconds:.0f}s"
            )
        if bar is not None:
            bar.finish_unit(note, counters.snapshot()["generated_tokens"])
        else:
            say(f"[{task.name} {n}/{len(questions)}] {note} (elapsed {time.perf_counter() - started:.0f}s)")
    result.seconds = time.perf_counter() - started
    return result


def _report(engine: Engine, records: list[AlignmentRecord], trees: list[dict]) -> Report:
    return build_report(records, engine.config.analysis, seed=engine.config.seed, trees=trees)


def run_study(
    study: StudyConfig,
    config: RunConfig,
    *,
    root: Path | None = None,
    say: Say = lambda s: None,
    engine: Engine | None = None,
    show_progress: bool = False,
    estimate_first: bool = True,
) -> dict[str, Any]:
    """Run every task and return the study's results as plain data (see the module docstring).

    ``show_progress``: a progress line on stderr (stage, tok/s, ETA). ``estimate_first``: estimate
    the cost before running (a short calibration) and report it beside what was spent.
    """
    from gradalign_client.progress import ProgressLine

    started = time.perf_counter()
    engine = engine or Engine(config)
    loaded = time.perf_counter() - started
    say(f"loaded {engine.student.info.name} and {len(engine.teachers)} teachers in {loaded:.0f}s")
    expected = estimate_study(engine, study, root) if estimate_first else None
    for line in expected.lines() if expected else ():
        say(line)
    total = sum(len(task.load(root)) for task in study.tasks)
    bar = ProgressLine(total) if show_progress else None
    generated_before = engine.student.counters.snapshot()["generated_tokens"]
    run_started = time.perf_counter()
    tasks = [_run_task(engine, task, study, root, say, bar) for task in study.tasks]
    if bar is not None:
        bar.close()
    spent = {
        "generated_tokens": engine.student.counters.snapshot()["generated_tokens"] - generated_before,
        "seconds": round(time.perf_counter() - run_started, 1),
    }
    records = [r for t in tasks for r in t.records]
    trees = [tr for t in tasks for tr in t.trees]
    return {
        "receipt": engine.receipt(),
        "study": dataclasses.asdict(study),
        "seconds": round(time.perf_counter() - started, 1),
        "load_seconds": round(loaded, 1),
        "generated_tokens": spent["generated_tokens"],
        "cost": {"estimate": expected.to_dict() if expected else None, "spent": spent},
        "tasks": [_task_summary(engine, t) for t in tasks],
        "contexts": context_table([c for t in tasks for c in t.contexts]),
        "report": _report(engine, records, trees).to_dict(),
        "records": records,
    }


def estimate_study(engine: Engine, study: StudyConfig, root: Path | None):
    """The expected cost of every task's questions (an upper bound: screening drops some)."""
    questions = [q for task in study.tasks for q in task.load(root)]
    return engine.estimate(questions)


def _task_summary(engine: Engine, task: TaskResult) -> dict[str, Any]:
    kept = [t for t in task.trees if not t["screened_out"]]
    return {
        "name": task.name,
        "questions": task.questions,
        "screened_out": task.screened_out,
        "kept": len(kept),
        "seconds": round(task.seconds, 1),
        "screen_rates": [t["screen_successes"] / t["screen_rollouts"] for t in task.trees if t["screen_rollouts"]],
        "base_accuracy": sum(t["correct"] for t in kept) / max(1, sum(t["rollouts"] for t in kept)),
        "contexts": context_table(task.contexts),
        "report": _report(engine, task.records, task.trees).to_dict(),
    }


# --------------------------------------------------------------------------------------------------
# survey: success rates per data set and temperature
# --------------------------------------------------------------------------------------------------


def survey(
    engine: Engine,
    datasets: Sequence[tuple[str, Path]],
    temperatures: Sequence[float],
    questions: int,
    rollouts: int,
    say: Say = lambda s: None,
) -> list[dict[str, Any]]:
    """Per (data set, temperature): mean success and the share of questions with mixed success."""
    rows = []
    scfg = engine.config.sampling
    for name, path in datasets:
        items = load_questions(path, limit=questions)
        for temperature in temperatures:
            started = time.perf_counter()
            requests = [
                BranchRequest(
                    prefix=tuple(render_prompt(engine.student.tokenizer, q, engine.config.prompt)),
                    n=rollouts,
                    max_new_tokens=scfg.max_new_tokens,
                    seed=derive_seed("survey", q.id, temperature),
                )
                for q in items
            ]
            outs = engine.student.generate(requests, temperature=temperature, top_p=scfg.top_p, top_k=scfg.top_k)
            rates = [
                sum(engine.verify(q, t, scfg.max_new_tokens).correct for t in out) / rollouts
                for q, out in zip(items, outs)
            ]
            lengths = [len(t) for out in outs for t in out]
            row = {
                "dataset": name,
                "temperature": temperature,
                "questions": len(items),
                "rollouts": rollouts,
                "mean_success": sum(rates) / len(rates),
                "mixed": sum(0 < r < 1 for r in rates) / len(rates),
                "never": sum(r == 0 for r in rates) / len(rates),
                "always": sum(r == 1 for r in rates) / len(rates),
                "mean_tokens": sum(lengths) / len(lengths),
                "seconds": round(time.perf_counter() - started, 1),
            }
            say(
                f"{name} t={temperature}: success {row['mean_success']:.2f}, mixed {row['mixed']:.2f}, "
                f"{row['mean_tokens']:.0f} tokens, {row['seconds']:.0f}s"
            )
            rows.append(row)
    return rows
