"""Scoring a built tree: one alignment record per distinct node x teacher x method.

For every analysis node u (a distinct prefix, docs/method.md "Distinct nodes") it reads S(u), p~ and
the Monte Carlo estimates v from the tree's counts, computes the ideal update g*, asks each teacher
for q at u, computes each method's update d over S(u) and their cosine. A self-distillation
teacher's context at u leaves out every base rollout through u ("Leave-one-out demonstrations"), so
nodes are grouped by the context they get and each group costs one teacher-forced pass per rollout
it needs. Per-sample methods (single_sample, minillm) depend on the token a rollout sampled: at a
node shared by several rollouts their update is the mean of the rollouts' updates, the direction an
on-policy training step on those rollouts would apply to the logits at u.

Knows trees, teachers and backends; knows nothing of storage, jobs or gRPC.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import gradients as G
from .backends import Backend, BranchRequest, CancelToken
from .cache import LruCache
from .config import AnalysisConfig, RolloutConfig, SamplingConfig
from .records import AlignmentRecord, Candidate, SkipReason
from .stats import success_interval
from .teachers import Teacher, TeacherContext
from .tree import AnalysisNode, ChildCount, RolloutTree

__all__ = ["TreeScorer", "NodeSupport", "ScreenFn", "PER_SAMPLE_METHODS"]

#: Methods whose update depends on the token each rollout sampled (averaged over a shared node's rollouts).
PER_SAMPLE_METHODS = ("single_sample", "minillm")
_SCORE_GROUP = 4  # rollouts per backend call: bounds the [T, vocab] tensors held at once

#: ``screen(teacher, tree, prompt, cancel) -> bool``: does the teacher, with this prompt, solve the question?
ScreenFn = Callable[[Teacher, RolloutTree, list[int], "CancelToken | None"], bool]


@dataclass
class _Pass:
    """What one teacher-forced pass over a rollout leaves: rows at the wanted depths, sampled log-probs."""

    rows: dict[int, torch.Tensor]  # depth -> log-probs over the vocabulary
    sampled: torch.Tensor  # [T] log-prob of the rollout's own token at each depth


@dataclass
class NodeSupport:
    """What the student side fixes at a node, shared by every teacher and method."""

    node: AnalysisNode
    rollouts: list[int]  # base rollouts through the node
    children: dict[int, ChildCount]
    order: list[int]  # forced candidates first, then the other children
    support: list[int]  # S(u): children with at least min_child_samples visits
    p_full: np.ndarray  # student probabilities of S(u) (full vocabulary)
    p_tilde: np.ndarray  # renormalised over S(u); zeros when |S(u)| < 2
    v: np.ndarray  # success estimates of S(u)
    ideal: np.ndarray  # g* over S(u)
    logp_row: torch.Tensor  # the student's log-probabilities at u


@dataclass
class _TeacherAtNode:
    """One teacher at one node: its row, its log-probs of each rollout's own tokens, the context used."""

    context: TeacherContext
    logq_row: torch.Tensor | None = None
    sampled: dict[int, torch.Tensor] = field(default_factory=dict)  # rollout -> [T] teacher log-probs
    skip_reason: str | None = None


def _renormalized(x: np.ndarray) -> np.ndarray:
    return G.renormalize(x) if len(x) >= 2 and x.sum() > 0 else np.zeros(len(x))


def score_passes(
    backend: Backend,
    jobs: Sequence[tuple[list[int], list[int]]],
    want: Sequence[Sequence[int]],
    temperature: float,
    cancel: CancelToken | None,
) -> list[_Pass]:
    """Teacher-forced passes for (context, completion) ``jobs``, keeping the rows at ``want[i]`` depths."""
    out: list[_Pass] = []
    for start in range(0, len(jobs), _SCORE_GROUP):
        chunk = jobs[start : start + _SCORE_GROUP]
        logps = backend.score([c for c, _ in chunk], [y for _, y in chunk], temperature=temperature, cancel=cancel)
        for (_, tokens), depths, lp in zip(chunk, want[start : start + _SCORE_GROUP], logps):
            sampled = lp.gather(1, torch.tensor(tokens)[:, None]).squeeze(1).clone()
            out.append(_Pass(rows={t: lp[t].clone() for t in depths}, sampled=sampled))
    return out


class TreeScorer:
    """Turns a tree into records for given teachers and methods (one call = one ScoreTeacher's worth)."""

    def __init__(
        self,
        student: Backend,
        teachers: Mapping[str, Teacher],
        analysis: AnalysisConfig,
        screen: ScreenFn,
        cancel: CancelToken | None = None,
    ):
        self.student = student
        self.teachers = teachers
        self.analysis = analysis
        self.screen = screen
        self.cancel = cancel

    def records(
        self, tree: RolloutTree, teachers: Sequence[str], methods: Sequence[str], progress=None
    ) -> list[AlignmentRecord]:
        """Records of every node x teacher x method; ``progress("scoring", done, total)`` per teacher."""
        report = progress or (lambda stage, done, total: None)
        report("scoring", 0, len(teachers))
        rcfg = RolloutConfig(**tree.settings["rollouts"])
        sampling = SamplingConfig(**tree.settings["sampling"])
        counter = tree.counter()
        student = self._student_passes(tree, sampling)
        supports = [self._support(tree, node, counter, rcfg, student) for node in tree.nodes]
        records: list[AlignmentRecord] = []
        for done, name in enumerate(teachers, 1):
            views = self._teacher_views(self.teachers[name], tree, need_paths="minillm" in methods)
            for support, view in zip(supports, views):
                records.extend(self._node_records(tree, support, view, student, name, methods, rcfg))
            report("scoring", done, len(teachers))
        return records

    # ------------------------------------------------------------------ student side
    def _student_passes(self, tree: RolloutTree, sampling: SamplingConfig) -> dict[int, _Pass]:
        """One pass per rollout through any node (rows at the depths of the nodes it represents)."""
        want: dict[int, set[int]] = {}
        for node in tree.nodes:
            for r in node.through():
                want.setdefault(r, set())
            want[node.rollout_index].add(node.depth)
        order = sorted(i for i in want if tree.rollouts[i].tokens)
        jobs = [(list(tree.prompt_ids), tree.rollouts[i].tokens) for i in order]
        passes = score_passes(self.student, jobs, [sorted(want[i]) for i in order], sampling.temperature, self.cancel)
        return dict(zip(order, passes))

    def _support(
        self, tree: RolloutTree, node: AnalysisNode, counter, rcfg: RolloutConfig, student: Mapping[int, _Pass]
    ) -> NodeSupport:
        tokens = tree.rollouts[node.rollout_index].tokens
        children = {c.token_id: c for c in counter.children(tokens[: node.depth])}
        order = list(node.candidates) + sorted(t for t in children if t not in node.candidates)
        support = [t for t in order if t in children and children[t].visits >= rcfg.min_child_samples]
        logp_row = student[node.rollout_index].rows[node.depth]
        p_full = np.array([math.exp(float(logp_row[t])) for t in support], dtype=np.float64)
        v = np.array([children[t].successes / children[t].visits for t in support], dtype=np.float64)
        p_tilde = _renormalized(p_full)
        ideal = G.ideal_gradient(p_tilde, v) if p_tilde.any() else np.zeros(len(support))
        return NodeSupport(node, node.through(), children, order, support, p_full, p_tilde, v, ideal, logp_row)

    # ------------------------------------------------------------------ teacher side
    def _teacher_views(self, teacher: Teacher, tree: RolloutTree, need_paths: bool) -> list[_TeacherAtNode]:
        """The teacher at every node: contexts leave the node's rollouts out; one pass per (prompt, rollout)."""
        views: list[_TeacherAtNode] = []
        jobs: dict[tuple[tuple[int, ...], int], set[int]] = {}  # (prompt, rollout) -> depths whose rows are kept
        prompts: list[tuple[int, ...] | None] = []
        for node in tree.nodes:
            if teacher.is_self:
                ids, ctx = teacher.prompt_ids(tree, set(node.through()), cancel=self.cancel)
            else:
                ids, ctx = list(tree.prompt_ids), TeacherContext(text=None)
            view = _TeacherAtNode(context=ctx, skip_reason=ctx.skip_reason)
            if (
                ids is not None
                and teacher.is_self
                and teacher.spec.screen
                and not self.screen(teacher, tree, ids, self.cancel)
            ):
                ids, view.skip_reason = None, SkipReason.SCREENED_OUT
            views.append(view)
            prompts.append(tuple(ids) if ids is not None else None)
            if ids is None:
                continue
            jobs.setdefault((tuple(ids), node.rollout_index), set()).add(node.depth)
            for r in node.through() if need_paths else ():
                jobs.setdefault((tuple(ids), r), set())
        keys = [k for k in jobs if tree.rollouts[k[1]].tokens]
        passes = score_passes(
            teacher.backend,
            [(list(p), tree.rollouts[r].tokens) for p, r in keys],
            [sorted(jobs[k]) for k in keys],
            self.analysis.teacher_temperature,
            self.cancel,
        )
        by_key = dict(zip(keys, passes))
        for node, view, prompt in zip(tree.nodes, views, prompts):
            if prompt is None:
                continue
            view.logq_row = by_key[(prompt, node.rollout_index)].rows[node.depth]
            view.sampled = {r: by_key[(prompt, r)].sampled for r in node.through() if (prompt, r) in by_key}
        return views

    # ------------------------------------------------------------------ records
    def _candidates(
        self,
        support: NodeSupport,
        q_full: np.ndarray | None,
        q_tilde: np.ndarray,
        logq_row: torch.Tensor | None,
        sampled_tokens: set[int],
        rcfg: RolloutConfig,
    ) -> list[Candidate]:
        tok = self.student.tokenizer
        renorm = {x: (float(support.p_tilde[j]), float(q_tilde[j])) for j, x in enumerate(support.support)}
        out = []
        for x in support.order:
            c = support.children.get(x)
            visits, succ = (c.visits, c.successes) if c else (0, 0)
            lo, hi = success_interval(succ, visits, rcfg.interval, rcfg.confidence)
            out.append(
                Candidate(
                    token_id=int(x),
                    token_text=tok.decode([int(x)]),
                    p=math.exp(float(support.logp_row[x])),
                    q=math.exp(float(logq_row[x])) if logq_row is not None else float("nan"),
                    p_renorm=renorm.get(x, (0.0, 0.0))[0],
                    q_renorm=renorm.get(x, (0.0, 0.0))[1],
                    visits=visits,
                    successes=succ,
                    estimate=succ / visits if visits else float("nan"),
                    ci_low=float(lo),
                    ci_high=float(hi),
                    sampled=x in sampled_tokens,
                    forced=x in support.node.candidates,
                    in_support=x in renorm,
                )
            )
        return out

    def _per_sample_direction(
        self,
        method: str,
        tree: RolloutTree,
        support: NodeSupport,
        view: _TeacherAtNode,
        student: Mapping[int, _Pass],
        q_tilde: np.ndarray,
    ) -> np.ndarray | None:
        """Mean over the node's rollouts of their per-sample updates (None when no rollout's token is in S(u))."""
        acfg, t = self.analysis, support.node.depth
        updates = []
        for r in support.rollouts:
            token = tree.rollouts[r].tokens[t]
            if token not in support.support or r not in student:
                continue
            j = support.support.index(token)
            advantage = float(view.logq_row[token] - support.logp_row[token])
            rtg = None
            if method == "minillm":
                ratios = (view.sampled[r] - student[r].sampled).numpy().astype(np.float64)
                rtg = float(
                    G.minillm_returns(ratios, acfg.minillm_gamma, acfg.minillm_length_norm, acfg.minillm_single_step)[t]
                )
            updates.append(
                G.direction(
                    method,
                    support.p_tilde,
                    q_tilde,
                    sampled_index=j,
                    advantage=advantage,
                    return_to_go=rtg,
                    single_step=acfg.minillm_single_step,
                )
            )
        return np.mean(updates, axis=0) if updates else None

    def _node_records(
        self,
        tree: RolloutTree,
        support: NodeSupport,
        view: _TeacherAtNode,
        student: Mapping[int, _Pass],
        name: str,
        methods: Sequence[str],
        rcfg: RolloutConfig,
    ) -> list[AlignmentRecord]:
        acfg, node = self.analysis, support.node
        rep = tree.rollouts[node.rollout_index]
        t, n = node.depth, len(support.support)
        logq_row = view.logq_row
        q_full = np.array([math.exp(float(logq_row[x])) for x in support.support]) if logq_row is not None else None
        q_tilde = _renormalized(q_full) if q_full is not None else np.zeros(n)
        sampled_tokens = {tree.rollouts[r].tokens[t] for r in support.rollouts}
        candidates = self._candidates(support, q_full, q_tilde, logq_row, sampled_tokens, rcfg)
        ideal_norm = float(np.linalg.norm(support.ideal))
        diagnostics = advantage = None
        if logq_row is not None:
            diagnostics = G.batched_diagnostics(support.logp_row[None, :], logq_row[None, :])[0]
            if n >= 2:
                advantage = G.teacher_advantage(support.p_tilde, q_tilde, support.v)
        base_skip = node.skip_reason or view.skip_reason
        if base_skip is None and n < 2:
            base_skip = SkipReason.TOO_FEW_CANDIDATES
        if base_skip is None and (ideal_norm == 0.0 or ideal_norm < acfg.min_ideal_norm):  # 0: every child alike
            base_skip = SkipReason.IDEAL_NORM_BELOW_THRESHOLD
        outcomes = [tree.rollouts[r].correct for r in support.rollouts]
        common = dict(
            question_id=tree.question.id,
            tree_id=tree.tree_id,
            rollout_index=node.rollout_index,
            rollout_correct=outcomes[0] if len(set(outcomes)) == 1 else None,
            depth=t,
            path_length=len(rep.tokens),
            normalized_depth=float(np.mean([t / len(tree.rollouts[r].tokens) for r in support.rollouts])),
            teacher=name,
            candidates=candidates,
            ideal=[float(x) for x in support.ideal],
            ideal_norm=ideal_norm,
            teacher_advantage=None if advantage is None else float(advantage),
            diagnostics=diagnostics,
            sampled_token_id=int(rep.tokens[t]),
            prefix_token_ids=list(rep.tokens[:t]) if acfg.include_prefix_ids else None,
            rollout_indices=list(support.rollouts),
            rollouts_correct=int(sum(outcomes)),
            demo_source=view.context.demo_source,
            wrong_source=view.context.wrong_source,
        )
        out = []
        for method in methods:
            distill, skip = np.zeros(n), base_skip
            if logq_row is not None and n >= 2 and view.skip_reason is None:
                if method in PER_SAMPLE_METHODS:
                    found = self._per_sample_direction(method, tree, support, view, student, q_tilde)
                    if found is None:
                        skip = skip or SkipReason.TOO_FEW_CANDIDATES
                    else:
                        distill = found
                else:
                    distill = G.direction(method, support.p_tilde, q_tilde, jsd_beta=acfg.jsd_beta)
            cosine = G.cosine(support.ideal, distill) if skip is None else None
            if skip is None and cosine is None:
                skip = SkipReason.ZERO_DISTILL_NORM
            out.append(
                AlignmentRecord(
                    **common,
                    method=method,
                    distill=[float(x) for x in distill],
                    cosine=cosine,
                    skip_reason=skip,
                    distill_norm=float(np.linalg.norm(distill)),
                )
            )
        return out


def screen_context(
    teacher: Teacher,
    tree: RolloutTree,
    prompt: list[int],
    cancel: CancelToken | None,
    verify: Callable[[RolloutTree, list[int], object], bool],
    cache: LruCache,
) -> bool:
    """Whether the teacher, answering greedily after ``prompt``, solves the question (cached per prompt)."""
    key = (teacher.name, tree.tree_id, hashlib.sha256(json.dumps(prompt).encode()).hexdigest())

    def compute() -> bool:
        max_new = tree.settings["sampling"]["max_new_tokens"]
        req = BranchRequest(prefix=tuple(prompt), n=1, max_new_tokens=max_new, seed=0)
        tokens = teacher.backend.generate([req], temperature=0.0, cancel=cancel)[0][0]
        return verify(tree, tokens, teacher.backend.tokenizer)

    return cache.get_or_compute(key, compute)
