"""Method.md step 6: spend extra continuations where they most reduce the error of what is reported.

Nodes sharing a prefix share their children's counts and are planned together as one
:class:`NodeGroup`. A group's children are those the scorer will use: its forced candidates and every
other child that rollouts reached often enough to join S(u) (``min_child_samples``); such a child,
seen only in passing, would otherwise keep its few noisy visits whatever is spent. The objective
(:mod:`.allocation`) is the sum over nodes, target teachers and methods of the standard error of
cos(g*, d); with no target teacher, an even spread over the open children (weighted by how many
nodes share them). Each of ``ROUNDS`` rounds re-reads the counts (S(u) may have grown), plans its
share of the budget greedily, ``adaptive_batch`` continuations at a time to the child whose batch
lowers the objective most (planned outcomes at the posterior mean), and runs them. Children whose
outcome is already fixed (the forced token ends the completion) get none.

Knows the tree, the node rows of the node-choosing pass and the allocation models; the builder runs
the continuations it plans.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import allocation
from . import gradients as G
from .config import AnalysisConfig, RolloutConfig, SamplingConfig
from .tree import AnalysisNode, ChildCount, Continuation, RolloutTree

__all__ = ["NodeGroup", "spend_adaptive_budget", "ROUNDS"]

ROUNDS = 8  # the outcomes are re-read this many times: later rounds use earlier results
#: ``run(work) -> continuations`` for work items (node, candidate, n): the builder's step 5 with adaptive=True.
RunFn = Callable[[list[tuple[AnalysisNode, int, int]]], list[Continuation]]


@dataclass
class NodeGroup:
    """The analysis nodes of one prefix, planned together."""

    prefix: tuple[int, ...]
    depth: int
    nodes: list[AnalysisNode] = field(default_factory=list)
    forced: list[int] = field(default_factory=list)  # candidates continuations were forced through
    counts: dict[int, ChildCount] = field(default_factory=dict)  # the children's counts, re-read each round
    children: list[int] | None = None  # forced + seen-in-passing children that the plan covers
    p_tilde: np.ndarray | None = None  # the student's distribution renormalised over ``children``
    directions: list[np.ndarray] = field(default_factory=list)  # one per node x target teacher x method

    def refresh(self, counts: Sequence[ChildCount], min_child_samples: int) -> bool:
        """Re-read the counts; True when the set of planned children changed (the geometry must follow)."""
        self.counts = {c.token_id: c for c in counts}
        seen = sorted(t for t, c in self.counts.items() if c.visits >= min_child_samples and t not in self.forced)
        children = self.forced + seen
        changed = children != self.children
        self.children = children
        return changed

    def model(self, aim: bool, eos: set[int], room: int):
        """The allocation model of this group (error model when aiming at teachers, else even spread)."""
        visits = [self.counts[c].visits if c in self.counts else 0 for c in self.children]
        determined = [c in eos or room - self.depth - 1 <= 0 for c in self.children]
        if aim:
            successes = [self.counts[c].successes if c in self.counts else 0 for c in self.children]
            return allocation.NodeErrorModel(self.p_tilde, visits, successes, determined, self.directions), 1.0
        return allocation.EvenSpread(visits, determined), float(len(self.nodes))

    def force(self, child: int) -> AnalysisNode:
        """The node whose prefix a continuation through ``child`` starts from (forcing a seen child first)."""
        if child not in self.forced:
            # A child seen in passing is now forced: its nodes' records say so.
            self.forced.append(child)
            for node in self.nodes:
                node.candidates.append(child)
        return next(node for node in self.nodes if child in node.candidates)


def _groups(tree: RolloutTree, nodes: list[AnalysisNode]) -> list[NodeGroup]:
    by_prefix: dict[tuple[int, ...], NodeGroup] = {}
    for node in nodes:
        prefix = tuple(tree.rollouts[node.rollout_index].tokens[: node.depth])
        group = by_prefix.setdefault(prefix, NodeGroup(prefix=prefix, depth=node.depth))
        group.nodes.append(node)
        group.forced.extend(c for c in node.candidates if c not in group.forced)
    return list(by_prefix.values())


def _geometry(group: NodeGroup, targets: list[str], node_rows: dict, analysis: AnalysisConfig) -> None:
    """p~ over the group's children and its directions: one per node x target teacher x method.

    Per-sample methods (single_sample, minillm) enter through their expectation over the sampled
    token, the reverse-KL direction. A node whose rollout has no context for a teacher has no row.
    """
    first = group.nodes[0]  # every node of a group has the same prefix, hence the same p
    p = node_rows[(None, first.rollout_index, first.depth)][group.children].double().exp().numpy()
    group.p_tilde, group.directions = p / p.sum(), []
    methods = list(dict.fromkeys("reverse_kl" if m in ("single_sample", "minillm") else m for m in analysis.methods))
    for name in targets:
        for node in group.nodes:
            row = node_rows.get((name, node.rollout_index, node.depth))
            if row is None:
                continue
            q = row[group.children].double().exp().numpy()
            if q.sum() <= 0:
                continue
            for method in methods:
                group.directions.append(G.direction(method, group.p_tilde, q / q.sum(), jsd_beta=analysis.jsd_beta))


def _plan_round(
    groups: list[NodeGroup], models: list, weights: list[float], batch: int, budget: int
) -> dict[tuple[int, int], int]:
    """Greedy plan of one round: ``batch`` continuations at a time to the child whose batch helps most."""
    heap: list[tuple[float, int, int, int]] = []
    version = [0] * len(models)

    def push(mi: int) -> None:
        for k, gain in enumerate(models[mi].child_gains(batch)):
            if gain > 0:
                heapq.heappush(heap, (-weights[mi] * float(gain), mi, k, version[mi]))

    for mi in range(len(models)):
        push(mi)
    planned: dict[tuple[int, int], int] = {}
    while heap and budget > 0:
        _, mi, k, ver = heapq.heappop(heap)
        if ver != version[mi]:
            continue  # stale: the node's gains changed since this entry was pushed
        take = min(batch, budget)
        models[mi].add(k, take)
        planned[(mi, k)] = planned.get((mi, k), 0) + take
        budget -= take
        version[mi] += 1
        push(mi)
    return planned


def spend_adaptive_budget(
    tree: RolloutTree,
    nodes: list[AnalysisNode],
    rcfg: RolloutConfig,
    scfg: SamplingConfig,
    targets: list[str],
    node_rows: dict,
    analysis: AnalysisConfig,
    eos: set[int],
    run: RunFn,
) -> None:
    """Spend ``rcfg.adaptive_continuations`` over ``ROUNDS`` rounds (module docstring); appends to the tree."""
    left = rcfg.adaptive_continuations
    groups = _groups(tree, nodes)
    while left > 0:
        counter = tree.counter()
        for group in groups:
            if group.refresh(counter.children(group.prefix), rcfg.min_child_samples):
                _geometry(group, targets, node_rows, analysis)
        # Aimed at the teachers' directions where any exist (a group without one, e.g. no context for
        # its rollouts, has no cosine to improve); an even spread only when there is nothing to aim at.
        aim = any(group.directions for group in groups)
        planned_groups = [g for g in groups if not aim or g.directions]
        models, weights = (
            zip(*(g.model(aim, eos, scfg.max_new_tokens) for g in planned_groups)) if planned_groups else ((), ())
        )
        # Equal rounds: a doubling schedule (small early rounds) measured worse on the exact toy.
        round_budget = min(left, max(rcfg.adaptive_batch, -(-rcfg.adaptive_continuations // ROUNDS)))
        planned = _plan_round(planned_groups, list(models), list(weights), rcfg.adaptive_batch, round_budget)
        if not planned:
            break  # every child's outcome is fixed: nothing left to learn
        work = []
        for (gi, k), n in sorted(planned.items()):
            group = planned_groups[gi]
            child = group.children[k]
            work.append((group.force(child), child, n))
            left -= n
        tree.continuations.extend(run(work))
