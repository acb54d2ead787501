"""Building a rollout tree: method.md steps 1-5 for one question.

1. Base rollouts, verified (the first ``screen_rollouts`` of them screen the question first).
2-4. One teacher-forced pass per model per rollout gives priorities along each path; analysis nodes
   are chosen in exponential depth windows and get their candidates; a prefix reached by several
   rollouts is one node.
5. Each candidate is forced and continued ``continuations`` times, under the budget.
Step 6 (adaptive allocation) is in :mod:`.adaptive`. Every random choice derives from the seed.

Knows backends, teachers and the tree; knows nothing of gradients' statistics, storage or gRPC.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch

from . import gradients as G
from .backends import Backend, BranchRequest, CancelToken
from .config import AnalysisConfig, RolloutConfig, SamplingConfig
from .identity import base_seed, derive_seed
from .judging import Judge
from .records import SkipReason
from .teachers import Teacher
from .tree import AnalysisNode, Continuation, Rollout, RolloutTree, TreeSummary

__all__ = ["TreeBuilder", "depth_windows", "ProgressFn", "NodeRows"]

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)
#: Log-probability rows at the chosen nodes, kept for step 6: (None | teacher, rollout, depth) -> row.
NodeRows = dict
_SCORE_GROUP = 4  # rollouts scored per backend call: bounds [T, vocab] tensors held at once
ScreenFn = Callable[[Teacher, RolloutTree, list, "CancelToken | None"], bool]
AdaptFn = Callable[[list, "NodeRows | None"], None]


def depth_windows(length: int) -> list[tuple[int, int]]:
    """Exponentially growing windows [0,1), [1,3), [3,7), ... covering depths 0..length-1."""
    windows, start, width = [], 0, 1
    while start < length:
        windows.append((start, min(start + width, length)))
        start, width = start + width, width * 2
    return windows


class TreeBuilder:
    """Runs steps 1-5 with one student and its teachers."""

    def __init__(
        self,
        student: Backend,
        teachers: Mapping[str, Teacher],
        analysis: AnalysisConfig,
        judge: Judge,
        screen: ScreenFn,
    ):
        self.student = student
        self.teachers = teachers
        self.analysis = analysis
        self.judge = judge
        self.screen = screen

    def build(
        self,
        tree: RolloutTree,
        targets: list[str],
        cancel: CancelToken | None = None,
        progress: ProgressFn | None = None,
        adapt: AdaptFn | None = None,
    ) -> None:
        """Fill ``tree`` (its settings given) with rollouts, nodes and continuations, and its summary.

        ``adapt(active_nodes, node_rows)`` runs step 6 when the settings ask for adaptive continuations.
        """
        rcfg, scfg = RolloutConfig(**tree.settings["rollouts"]), SamplingConfig(**tree.settings["sampling"])
        seed, report = tree.settings["seed"], progress or (lambda stage, done, total: None)
        started, generated = time.perf_counter(), self.student.counters.snapshot()["generated_tokens"]
        screened_out = self.base_rollouts(tree, rcfg, scfg, cancel, report)
        if not screened_out:
            # Step 6 needs the student's and teachers' rows at the nodes: kept from this pass, not recomputed.
            node_rows = {} if rcfg.adaptive_continuations > 0 else None
            nodes = self.choose_nodes(tree, rcfg, scfg, seed, targets, cancel, node_rows)
            report("nodes", len(nodes), len(nodes))
            active = apply_budget(nodes, rcfg)
            work = [(n, c, rcfg.continuations) for n in active for c in n.candidates]
            tree.continuations.extend(
                self.continue_nodes(tree, work, scfg, seed, cancel, adaptive=False, report=report)
            )
            if rcfg.adaptive_continuations > 0 and active and adapt is not None:
                adapt(active, node_rows)
            tree.nodes = sorted(nodes, key=lambda n: (n.rollout_index, n.depth))
        tree.summary = self.summary(tree, started, generated, screened_out=screened_out)

    # ------------------------------------------------------------------ step 1
    def base_rollouts(self, tree: RolloutTree, rcfg: RolloutConfig, scfg: SamplingConfig, cancel, report) -> bool:
        """Sample and verify the base rollouts; True when screening leaves the question out."""
        seed, screen = base_seed(tree.settings), rcfg.screen_rollouts
        batches = (
            [(screen, derive_seed(seed, "screen")), (rcfg.num_rollouts - screen, derive_seed(seed, "rest"))]
            if screen
            else [(rcfg.num_rollouts, seed)]
        )
        for n, batch_seed in batches:
            if n == 0:
                continue
            report("rollouts", len(tree.rollouts), rcfg.num_rollouts)
            # retain: the backend may keep each rollout's KV cache and hidden states, so that the student's
            # scoring pass and the continuations from its prefixes forward no token twice.
            request = BranchRequest(
                prefix=tuple(tree.prompt_ids), n=n, max_new_tokens=scfg.max_new_tokens, seed=batch_seed
            )
            done = len(tree.rollouts)
            sampled = sample(
                self.student,
                [request],
                scfg,
                cancel,
                lambda k, _total, done=done: report("rollouts", done + k, rcfg.num_rollouts),
                retain=True,
            )[0]
            for tokens in sampled:
                verdict, text = self.judge(tree.question, tokens, scfg.max_new_tokens)
                tree.rollouts.append(
                    Rollout(
                        index=len(tree.rollouts),
                        tokens=list(tokens),
                        text=text,
                        correct=verdict.correct,
                        extracted=verdict.extracted,
                        reason=verdict.reason,
                    )
                )
            if screen and len(tree.rollouts) == screen:
                rate = sum(r.correct for r in tree.rollouts) / screen
                if not rcfg.screen_min_success <= rate <= rcfg.screen_max_success:
                    report("rollouts", len(tree.rollouts), len(tree.rollouts))
                    return True
        report("rollouts", len(tree.rollouts), rcfg.num_rollouts)
        return False

    # ------------------------------------------------------------------ steps 2-4
    def choose_nodes(
        self,
        tree: RolloutTree,
        rcfg: RolloutConfig,
        scfg: SamplingConfig,
        seed: int,
        targets: list[str],
        cancel: CancelToken | None,
        node_rows: NodeRows | None = None,
    ) -> list[AnalysisNode]:
        """Steps 2-4, a few rollouts at a time so that only a few [T, vocab] tensors live at once.

        ``node_rows``, when given, receives the log-probability rows at the chosen nodes:
        ``(None, rollout, depth)`` for the student, ``(teacher, rollout, depth)`` for each target teacher.
        Rollouts are visited in index order, so the first to reach a prefix owns its node.
        """
        indices = [r.index for r in tree.rollouts if r.tokens]
        rng = np.random.default_rng(derive_seed(seed, tree.tree_id, "uniform-priority"))
        uniform = rcfg.priority == "uniform" or not targets
        by_prefix: dict[tuple[int, ...], AnalysisNode] = {}
        for start in range(0, len(indices), _SCORE_GROUP):
            group = indices[start : start + _SCORE_GROUP]
            logps, priority, pools, teacher_rows = self._path_scores(tree, group, rcfg, scfg, targets, cancel)
            for i in group:
                tokens = tree.rollouts[i].tokens
                prio = rng.random(len(tokens)) if uniform else priority[i].numpy()
                for node in nodes_on_path(i, tokens, prio, logps[i], pools[i], rcfg):
                    _claim(by_prefix, node, tuple(tokens[: node.depth]), node_rows, logps[i], teacher_rows, i)
        for prefix, node in by_prefix.items():
            node.rollouts = tree.rollouts_through(prefix)
        return list(by_prefix.values())

    def _path_scores(
        self, tree: RolloutTree, group: list[int], rcfg: RolloutConfig, scfg: SamplingConfig, targets: list[str], cancel
    ):
        """Student rows, node priorities and candidate pools along each rollout of ``group``."""
        completions = [tree.rollouts[i].tokens for i in group]
        scored = self.student.score(
            [tree.prompt_ids] * len(group), completions, temperature=scfg.temperature, cancel=cancel
        )
        logps = dict(zip(group, scored))
        k = rcfg.candidate_top_k
        priority = {i: torch.zeros(len(tree.rollouts[i].tokens), dtype=torch.float64) for i in group}
        pools = {i: [logps[i].topk(min(k, logps[i].shape[1]), dim=-1).indices] for i in group}
        teacher_rows: dict[str, dict[int, torch.Tensor]] = {}
        for name in targets:
            prompts = self._teacher_prompts(self.teachers[name], tree, group, cancel)
            have = [i for i in group if prompts[i] is not None]
            if not have:
                continue
            logqs = self.teachers[name].backend.score(
                [prompts[i] for i in have],
                [tree.rollouts[i].tokens for i in have],
                temperature=self.analysis.teacher_temperature,
                cancel=cancel,
            )
            teacher_rows[name] = dict(zip(have, logqs))
            for i, lq in zip(have, logqs):
                pools[i].append(lq.topk(min(k, lq.shape[1]), dim=-1).indices)
                if rcfg.priority == "gkd_norm":
                    score = G.gkd_gradient_norms(logps[i], lq, self.analysis.jsd_beta)
                else:
                    score = G.total_variation(logps[i], lq)
                priority[i] = torch.maximum(priority[i], score.to(torch.float64))
        return logps, priority, pools, teacher_rows

    def _teacher_prompts(
        self, teacher: Teacher, tree: RolloutTree, indices: Iterable[int], cancel
    ) -> dict[int, list[int] | None]:
        """Build-time prompts, one per rollout: each rollout's context leaves that rollout out."""
        prompts: dict[int, list[int] | None] = {}
        for i in indices:
            if not teacher.is_self:
                prompts[i] = list(tree.prompt_ids)
                continue
            ids, _ = teacher.prompt_ids(tree, {i}, cancel=cancel)
            if ids is not None and teacher.spec.screen and not self.screen(teacher, tree, ids, cancel):
                ids = None
            prompts[i] = ids
        return prompts

    # ------------------------------------------------------------------ step 5
    def continue_nodes(
        self,
        tree: RolloutTree,
        work: list[tuple[AnalysisNode, int, int]],
        scfg: SamplingConfig,
        seed: int,
        cancel: CancelToken | None,
        adaptive: bool,
        report: ProgressFn | None = None,
    ) -> list[Continuation]:
        """Force each (node, candidate) and sample ``n`` continuations after it; verify them."""
        report = report or (lambda stage, done, total: None)
        requests, owners, out = [], [], []
        for node, cand, n in work:
            base = tree.rollouts[node.rollout_index]
            remaining = scfg.max_new_tokens - node.depth - 1
            if cand in self.student.eos_token_ids or remaining <= 0:
                # The completion ends at the forced token: its outcome is determined, no sampling needed.
                ok = self.judge(tree.question, base.tokens[: node.depth] + [cand], scfg.max_new_tokens)[0].correct
                out.extend(Continuation(node.rollout_index, node.depth, cand, [], ok, adaptive) for _ in range(n))
                continue
            tag = len([o for o in owners if o[0] is node and o[1] == cand])  # distinct stream per extra round
            requests.append(
                BranchRequest(
                    prefix=tuple(tree.prompt_ids) + tuple(base.tokens[: node.depth]),
                    forced=(cand,),
                    n=n,
                    max_new_tokens=remaining,
                    seed=derive_seed(
                        seed, tree.tree_id, node.rollout_index, node.depth, cand, adaptive, len(tree.continuations), tag
                    ),
                )
            )
            owners.append((node, cand))
        stage = "adaptive" if adaptive else "continuations"
        results = sample(self.student, requests, scfg, cancel, lambda k, n: report(stage, k, n)) if requests else []
        for (node, cand), samples in zip(owners, results):
            base = tree.rollouts[node.rollout_index]
            for suffix in samples:
                ok = self.judge(tree.question, base.tokens[: node.depth] + [cand] + list(suffix), scfg.max_new_tokens)[
                    0
                ].correct
                out.append(Continuation(node.rollout_index, node.depth, cand, list(suffix), ok, adaptive))
        return out

    def summary(self, tree: RolloutTree, started: float, generated_before: int, *, screened_out: bool) -> TreeSummary:
        correct = sum(r.correct for r in tree.rollouts)
        screen = tree.settings["rollouts"].get("screen_rollouts", 0)
        return TreeSummary(
            tree_id=tree.tree_id,
            question_id=tree.question.id,
            rollouts=len(tree.rollouts),
            correct=correct,
            accuracy=correct / max(len(tree.rollouts), 1),
            nodes_analysed=sum(n.skip_reason is None for n in tree.nodes),
            nodes_skipped=sum(n.skip_reason is not None for n in tree.nodes),
            continuations=len(tree.continuations),
            tokens_generated=self.student.counters.snapshot()["generated_tokens"] - generated_before,
            seconds=round(time.perf_counter() - started, 3),
            screened_out=screened_out,
            screen_rollouts=screen,
            screen_successes=sum(r.correct for r in tree.rollouts[:screen]),
        )


def nodes_on_path(
    index: int, tokens: list[int], prio: np.ndarray, logp: torch.Tensor, pools: list[torch.Tensor], rcfg: RolloutConfig
) -> list[AnalysisNode]:
    """Up to nodes_per_window per depth window, at most nodes_per_path, with their candidates."""
    chosen: list[tuple[float, int, int]] = []
    for w, (lo, hi) in enumerate(depth_windows(len(tokens))):
        order = sorted(range(lo, hi), key=lambda t: (-prio[t], t))[: rcfg.nodes_per_window]
        chosen.extend((float(prio[t]), t, w) for t in order)
    chosen = sorted(chosen, key=lambda c: (-c[0], c[1]))[: rcfg.nodes_per_path]
    nodes = []
    for score, t, w in sorted(chosen, key=lambda c: c[1]):
        cands = [tokens[t]]  # the sampled token is always a candidate
        for pool in pools:
            for tokid in pool[t].tolist():
                if tokid not in cands and math.exp(float(logp[t, tokid])) >= rcfg.min_token_prob:
                    cands.append(tokid)
        nodes.append(AnalysisNode(rollout_index=index, depth=t, window=w, priority=score, candidates=cands))
    return nodes


def _claim(
    by_prefix: dict,
    node: AnalysisNode,
    prefix: tuple[int, ...],
    node_rows: NodeRows | None,
    logp: torch.Tensor,
    teacher_rows: dict[str, dict[int, torch.Tensor]],
    rollout: int,
) -> None:
    """Add a chosen node, or merge its candidates into the node that already owns its prefix."""
    if prefix in by_prefix:
        shared = by_prefix[prefix]
        shared.candidates.extend(c for c in node.candidates if c not in shared.candidates)
        return
    by_prefix[prefix] = node
    if node_rows is not None:
        node_rows[(None, rollout, node.depth)] = logp[node.depth].clone()
        for name, rows in teacher_rows.items():
            if rollout in rows:
                node_rows[(name, rollout, node.depth)] = rows[rollout][node.depth].clone()


def apply_budget(nodes: list[AnalysisNode], rcfg: RolloutConfig) -> list[AnalysisNode]:
    """Step 5's budget: highest priority first; nodes past ``max_continuations`` are skipped, not dropped."""
    spent = 0
    for node in sorted(nodes, key=lambda n: (-n.priority, n.rollout_index, n.depth)):
        cost = len(node.candidates) * rcfg.continuations
        if spent + cost > rcfg.max_continuations:
            node.skip_reason = SkipReason.BUDGET_EXHAUSTED
        else:
            spent += cost
    return [n for n in nodes if n.skip_reason is None]


def sample(backend, requests, scfg: SamplingConfig, cancel, progress, retain: bool = False):
    """``backend.generate`` with the run's sampling settings, passing ``progress`` when it takes one."""
    kwargs = dict(temperature=scfg.temperature, top_p=scfg.top_p, top_k=scfg.top_k, cancel=cancel, retain=retain)
    if _takes_progress(backend):
        kwargs["progress"] = progress
    return backend.generate(requests, **kwargs)


def _takes_progress(backend) -> bool:
    # Plug-in backends written before the progress hook keep working: it is passed only when accepted.
    import inspect

    try:
        return "progress" in inspect.signature(backend.generate).parameters
    except (TypeError, ValueError):
        return False
