"""The engine: builds rollout trees with targeted rollouts and scores teachers on them.

``Engine.build_tree`` runs method.md steps 1-6 for one question: base rollouts, one teacher-forced
pass per model per rollout, analysis nodes in exponential depth windows chosen by priority,
candidates, forced continuations under a budget, and optional adaptive allocation.
``Engine.score_tree`` turns a tree into per-node :class:`AlignmentRecord` s for any teachers and
methods: S(u), p~ and q~, the ideal update g*, each method's update d, cos(g*, d), teacher
advantage and diagnostics. Every random choice derives from the run's seed.

The engine works on token ids through a backend; it never sees protobuf, storage or threads.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from . import allocation
from .cache import LruCache
from . import gradients as G
from .backends import Backend, BranchRequest, CancelToken, load_backend
from .config import AnalysisConfig, RolloutConfig, RunConfig, SamplingConfig, canonical_method
from .data import Question
from .errors import BudgetError, ConfigError, NotFoundError, PreconditionError
from .prompts import render_prompt, render_user_message
from .records import AlignmentRecord, SkipReason
from .score import TreeScorer, screen_context
from .teachers import SUMMARY_PROMPT, Teacher, check_tokenizer_compatibility
from .tree import AnalysisNode, Continuation, Rollout, RolloutTree, TreeSummary
from .verifiers import VerifyResult, get_verifier, judge

__all__ = ["Engine", "ModelEntry", "derive_seed", "depth_windows", "ProgressFn"]

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)
SCHEMA = "gradalign-tree-v1"
_ADAPTIVE_ROUNDS = 8  # step 6 re-reads the outcomes this many times: later rounds use earlier results
_SCORE_GROUP = 4  # rollouts scored per backend call: bounds [T, vocab] tensors held at once


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the run seed and a path of names: independent streams, stable across runs."""
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def depth_windows(length: int) -> list[tuple[int, int]]:
    """Exponentially growing windows [0,1), [1,3), [3,7), ... covering depths 0..length-1."""
    windows, start, width = [], 0, 1
    while start < length:
        windows.append((start, min(start + width, length)))
        start, width = start + width, width * 2
    return windows


@dataclass(frozen=True)
class ModelEntry:
    """A resident model as ListModels reports it."""

    name: str
    role: str  # "student" or "teacher"
    kind: str  # "student", "self" or "external"
    context: str  # self-distillation context kind, "" otherwise
    backend: str
    dtype: str
    device: str
    tokenizer_hash: str
    model_hash: str


class Engine:
    """Student and teachers resident in memory; builds trees and scores teachers."""

    def __init__(self, config: RunConfig, *, backends: Mapping[str, Backend] | None = None):
        backends = dict(backends or {})
        self.config = config
        self.student: Backend = backends.pop("student", None) or load_backend(config.student)
        self.teachers: dict[str, Teacher] = {}
        # Bounded: a long-running server sees many questions. Summaries are per (author, question, solution),
        # screens per (teacher, tree, prompt); both are deterministic, so an evicted entry is recomputed alike.
        self._summaries: LruCache[tuple[str, str, str], str] = LruCache(4096)
        self._screens: LruCache[tuple[str, str, str], bool] = LruCache(16384)
        for spec in config.teachers:
            if spec.kind == "self":
                backend = self.student
            else:
                backend = backends.pop(spec.name, None) or load_backend(spec.model)
                check_tokenizer_compatibility(self.student.tokenizer, backend.tokenizer, spec.name)
            self.teachers[spec.name] = Teacher(spec, backend, config.prompt, summarize=self._summarizer(spec))

    # ------------------------------------------------------------------ inventory
    def list_models(self) -> list[ModelEntry]:
        info = self.student.info
        out = [ModelEntry(info.name, "student", "student", "", info.backend, info.dtype, info.device, info.tokenizer_hash, info.model_hash)]
        for t in self.teachers.values():
            ti = t.backend.info
            out.append(ModelEntry(t.name, "teacher", t.spec.kind, t.spec.context if t.is_self else "", ti.backend, ti.dtype, ti.device, ti.tokenizer_hash, ti.model_hash))
        return out

    def receipt(self) -> dict:
        """Model and tokenizer hashes, dtype, backend, versions and every setting of this engine."""
        import transformers

        from . import __version__

        return {
            "gradalign": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "student": asdict(self.student.info),
            "teachers": {n: {"spec": asdict(t.spec), "model": asdict(t.backend.info)} for n, t in self.teachers.items()},
            "config": self.config.to_dict(),
        }

    def close(self) -> None:
        seen = set()
        for backend in [self.student] + [t.backend for t in self.teachers.values()]:
            if id(backend) not in seen:
                seen.add(id(backend))
                backend.close()

    def _teacher(self, name: str) -> Teacher:
        if name not in self.teachers:
            raise NotFoundError("teacher", name, sorted(self.teachers))
        return self.teachers[name]

    # ------------------------------------------------------------------ tree identity
    def tree_id(
        self,
        question: Question,
        rollouts: RolloutConfig | None = None,
        sampling: SamplingConfig | None = None,
        seed: int | None = None,
        target_teachers: Sequence[str] | None = None,
    ) -> str:
        """Content address of a tree: question, student, prompt, settings, seed and target teachers."""
        settings = self._settings(question, rollouts, sampling, seed, target_teachers)
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:32]

    @staticmethod
    def _base_seed(settings: dict) -> int:
        """Seed of the base rollouts: only what shapes them (question, student, prompt, sampling, G, seed).

        Trees that differ only in node choice, continuations or targets then share their base rollouts,
        so comparing such settings compares them on the same rollouts.
        """
        shaping = {k: settings[k] for k in ("schema", "question", "student", "prompt", "sampling", "seed")}
        shaping["num_rollouts"] = settings["rollouts"]["num_rollouts"]
        if settings["rollouts"].get("screen_rollouts"):
            shaping["screen_rollouts"] = settings["rollouts"]["screen_rollouts"]
        return derive_seed("base", json.dumps(shaping, sort_keys=True, default=str))

    def _settings(self, question, rollouts, sampling, seed, target_teachers) -> dict:
        rollouts = rollouts or self.config.rollouts
        sampling = sampling or self.config.sampling
        seed = self.config.seed if seed is None else seed
        targets = self._targets(target_teachers)
        return {
            "schema": SCHEMA,
            "question": question.to_dict(),
            "student": {"model_hash": self.student.info.model_hash, "tokenizer_hash": self.student.info.tokenizer_hash,
                        "dtype": self.student.info.dtype, "backend": self.student.info.backend},
            "prompt": asdict(self.config.prompt),
            "rollouts": asdict(rollouts),
            "sampling": asdict(sampling),
            "seed": seed,
            "target_teachers": {n: {"spec": asdict(self.teachers[n].spec), "model_hash": self.teachers[n].backend.info.model_hash} for n in targets},
            "jsd_beta": self.config.analysis.jsd_beta,
            "teacher_temperature": self.config.analysis.teacher_temperature,
        }

    def _targets(self, target_teachers: Sequence[str] | None) -> list[str]:
        if target_teachers is None:
            return list(self.teachers)
        for name in target_teachers:
            self._teacher(name)
        return list(dict.fromkeys(target_teachers))

    # ------------------------------------------------------------------ helpers
    def _verifier(self, question: Question):
        options = question.extra.get("verifier_options", {}) if question.extra else {}
        if not isinstance(options, Mapping):
            raise ConfigError("question.extra.verifier_options", options, "must be an object of verifier options")
        return get_verifier(question.verifier, **dict(options))

    def verify(self, question: Question, tokens: Sequence[int], max_new_tokens: int | None = None) -> VerifyResult:
        """The verifier's verdict on a completion of the student's (token ids), sampled up to ``max_new_tokens``."""
        return self._verify(question, tokens, self.student.tokenizer, max_new_tokens)[0]

    def _verify(self, question: Question, tokens: Sequence[int], tokenizer, max_new_tokens: int | None = None) -> tuple[VerifyResult, str]:
        """Verdict and text; a completion that reached the length limit without an end token is truncated."""
        text = tokenizer.decode(list(tokens), skip_special_tokens=True)
        limit = self.config.sampling.max_new_tokens if max_new_tokens is None else max_new_tokens
        truncated = len(tokens) >= limit and (not tokens or tokens[-1] not in self.student.eos_token_ids)
        return judge(self._verifier(question), text, question, truncated=truncated), text

    def _summarizer(self, spec) -> Callable[[str, str, CancelToken | None], str]:
        def summarize(question_id: str, solution: str, cancel: CancelToken | None) -> str:
            author = spec.summarizer
            backend = self.student if author == "student" else self.teachers[author].backend
            key = (author, question_id, hashlib.sha256(solution.encode()).hexdigest())

            def write() -> str:
                prompt = render_user_message(backend.tokenizer, SUMMARY_PROMPT.format(solution=solution), self.config.prompt)
                req = BranchRequest(prefix=tuple(prompt), n=1, max_new_tokens=96, seed=0)
                out = backend.generate([req], temperature=0.0, cancel=cancel)
                return backend.tokenizer.decode(out[0][0], skip_special_tokens=True).strip()

            return self._summaries.get_or_compute(key, write)

        return summarize

    def _passes_screen(self, teacher: Teacher, tree: RolloutTree, prompt: list[int], cancel: CancelToken | None) -> bool:
        """Whether the teacher, answering greedily with its context, solves the question."""
        def verify(tr: RolloutTree, tokens, tokenizer) -> bool:
            return self._verify(tr.question, tokens, tokenizer, tr.settings["sampling"]["max_new_tokens"])[0].correct

        return screen_context(teacher, tree, prompt, cancel, verify, self._screens)

    def _teacher_prompts(self, teacher: Teacher, tree: RolloutTree, indices: Iterable[int], cancel: CancelToken | None):
        """Build-time prompts, one per rollout: each rollout's context leaves that rollout out."""
        prompts: dict[int, list[int] | None] = {}
        for i in indices:
            if not teacher.is_self:
                prompts[i] = list(tree.prompt_ids)
                continue
            ids, _ = teacher.prompt_ids(tree, {i}, cancel=cancel)
            if ids is not None and teacher.spec.screen and not self._passes_screen(teacher, tree, ids, cancel):
                ids = None
            prompts[i] = ids
        return prompts, {}

    # ------------------------------------------------------------------ BuildTree
    def build_tree(
        self,
        question: Question,
        *,
        rollouts: RolloutConfig | None = None,
        sampling: SamplingConfig | None = None,
        seed: int | None = None,
        target_teachers: Sequence[str] | None = None,
        cancel: CancelToken | None = None,
        progress: ProgressFn | None = None,
    ) -> RolloutTree:
        """Sample, choose analysis nodes and run targeted continuations for one question."""
        rcfg = rollouts or self.config.rollouts
        scfg = sampling or self.config.sampling
        seed = self.config.seed if seed is None else seed
        targets = self._targets(target_teachers)
        verifier = self._verifier(question)
        if hasattr(verifier, "validate"):
            verifier.validate(question)  # a reference answer the verifier cannot read fails before any sampling
        started = time.perf_counter()
        generated_before = self.student.counters.snapshot()["generated_tokens"]
        student, tok = self.student, self.student.tokenizer
        settings = self._settings(question, rcfg, scfg, seed, targets)
        tree_id = self.tree_id(question, rcfg, scfg, seed, targets)
        prompt = render_prompt(tok, question, self.config.prompt)
        report = progress or (lambda stage, done, total: None)
        sample_kw = dict(temperature=scfg.temperature, top_p=scfg.top_p, top_k=scfg.top_k, cancel=cancel)

        # Step 1: base rollouts, verified; with screening on, the first screen_rollouts of them decide
        # whether the question is informative at all before the rest are sampled.
        base_seed = self._base_seed(settings)
        tree = RolloutTree(tree_id=tree_id, question=question, prompt_ids=list(prompt), rollouts=[], settings=settings)
        screen = rcfg.screen_rollouts
        batches = [(screen, derive_seed(base_seed, "screen")), (rcfg.num_rollouts - screen, derive_seed(base_seed, "rest"))] if screen else [(rcfg.num_rollouts, base_seed)]
        screened_out = False
        for n, batch_seed in batches:
            if n == 0:
                continue
            report("rollouts", len(tree.rollouts), rcfg.num_rollouts)
            # retain: the backend may keep each rollout's KV cache and hidden states, so that the student's
            # scoring pass and the continuations from its prefixes forward no token twice.
            sampled = student.generate(
                [BranchRequest(prefix=tuple(prompt), n=n, max_new_tokens=scfg.max_new_tokens, seed=batch_seed)],
                **sample_kw, retain=True,
            )[0]
            for tokens in sampled:
                verdict, text = self._verify(question, tokens, tok, scfg.max_new_tokens)
                tree.rollouts.append(Rollout(index=len(tree.rollouts), tokens=list(tokens), text=text, correct=verdict.correct,
                                             extracted=verdict.extracted, reason=verdict.reason))
            if screen and len(tree.rollouts) == screen:
                rate = sum(r.correct for r in tree.rollouts) / screen
                if not rcfg.screen_min_success <= rate <= rcfg.screen_max_success:
                    screened_out = True
                    break
        report("rollouts", len(tree.rollouts), rcfg.num_rollouts)
        if screened_out:
            tree.summary = self._summary(tree, started, generated_before, screened_out=True)
            return tree

        # Steps 2-4: one pass per model per rollout -> priorities -> nodes -> candidates.
        # Step 6 needs the student's and teachers' rows at the nodes: kept from this pass, not recomputed.
        node_rows: dict | None = {} if rcfg.adaptive_continuations > 0 else None
        nodes = self._choose_nodes(tree, rcfg, scfg, seed, targets, cancel, node_rows)
        report("nodes", len(nodes), len(nodes))

        # Step 5: forced continuations under the budget, highest priority first.
        spent = 0
        for node in sorted(nodes, key=lambda n: (-n.priority, n.rollout_index, n.depth)):
            cost = len(node.candidates) * rcfg.continuations
            if spent + cost > rcfg.max_continuations:
                node.skip_reason = SkipReason.BUDGET_EXHAUSTED
            else:
                spent += cost
        active = [n for n in nodes if n.skip_reason is None]
        tree.continuations.extend(self._continue(tree, [(n, c, rcfg.continuations) for n in active for c in n.candidates], scfg, seed, cancel, adaptive=False))
        report("continuations", len(active), len(nodes))

        # Step 6: optional adaptive allocation.
        if rcfg.adaptive_continuations > 0 and active:
            self._adaptive(tree, active, rcfg, scfg, seed, cancel, targets, node_rows)
        tree.nodes = sorted(nodes, key=lambda n: (n.rollout_index, n.depth))
        tree.summary = self._summary(tree, started, generated_before, screened_out=False)
        return tree

    def _summary(self, tree: RolloutTree, started: float, generated_before: int, *, screened_out: bool) -> TreeSummary:
        correct = sum(r.correct for r in tree.rollouts)
        screen = tree.settings["rollouts"].get("screen_rollouts", 0)
        return TreeSummary(
            tree_id=tree.tree_id, question_id=tree.question.id, rollouts=len(tree.rollouts), correct=correct,
            accuracy=correct / max(len(tree.rollouts), 1),
            nodes_analysed=sum(n.skip_reason is None for n in tree.nodes),
            nodes_skipped=sum(n.skip_reason is not None for n in tree.nodes),
            continuations=len(tree.continuations),
            tokens_generated=self.student.counters.snapshot()["generated_tokens"] - generated_before,
            seconds=round(time.perf_counter() - started, 3),
            screened_out=screened_out, screen_rollouts=screen,
            screen_successes=sum(r.correct for r in tree.rollouts[:screen]),
        )

    def _choose_nodes(self, tree, rcfg: RolloutConfig, scfg: SamplingConfig, seed: int, targets: list[str], cancel,
                      node_rows: dict | None = None) -> list[AnalysisNode]:
        """Steps 2-4, a few rollouts at a time so that only a few [T, vocab] tensors live at once.

        ``node_rows``, when given, receives the log-probability rows at the chosen nodes:
        ``(None, rollout, depth)`` for the student, ``(teacher, rollout, depth)`` for each target teacher.
        """
        beta = self.config.analysis.jsd_beta
        k = rcfg.candidate_top_k
        indices = [r.index for r in tree.rollouts if r.tokens]
        rng = np.random.default_rng(derive_seed(seed, tree.tree_id, "uniform-priority"))
        uniform = rcfg.priority == "uniform" or not targets
        by_prefix: dict[tuple[int, ...], AnalysisNode] = {}  # rollouts in index order: the first to reach a prefix owns it
        for start in range(0, len(indices), _SCORE_GROUP):
            group = indices[start: start + _SCORE_GROUP]
            completions = {i: tree.rollouts[i].tokens for i in group}
            logps = dict(zip(group, self.student.score([tree.prompt_ids] * len(group), [completions[i] for i in group],
                                                       temperature=scfg.temperature, cancel=cancel)))
            priority = {i: torch.zeros(len(completions[i]), dtype=torch.float64) for i in group}
            pools = {i: [logps[i].topk(min(k, logps[i].shape[1]), dim=-1).indices] for i in group}
            teacher_logqs: dict[str, dict[int, torch.Tensor]] = {}
            for name in targets:
                teacher = self.teachers[name]
                prompts, _ = self._teacher_prompts(teacher, tree, group, cancel)
                have = [i for i in group if prompts[i] is not None]
                if not have:
                    continue
                logqs = teacher.backend.score([prompts[i] for i in have], [completions[i] for i in have],
                                              temperature=self.config.analysis.teacher_temperature, cancel=cancel)
                teacher_logqs[name] = dict(zip(have, logqs))
                for i, lq in zip(have, logqs):
                    pools[i].append(lq.topk(min(k, lq.shape[1]), dim=-1).indices)
                    if rcfg.priority == "gkd_norm":
                        score = G.gkd_gradient_norms(logps[i], lq, beta)
                    else:
                        score = G.total_variation(logps[i], lq)
                    priority[i] = torch.maximum(priority[i], score.to(torch.float64))
            for i in group:
                chosen = self._nodes_on_path(i, completions[i], rng.random(len(completions[i])) if uniform else priority[i].numpy(),
                                             logps[i], pools[i], rcfg)
                for node in chosen:
                    prefix = tuple(completions[i][: node.depth])
                    if prefix in by_prefix:  # a distinct prefix is one node: merge the candidates this rollout adds
                        shared = by_prefix[prefix]
                        shared.candidates.extend(c for c in node.candidates if c not in shared.candidates)
                        continue
                    by_prefix[prefix] = node
                    if node_rows is not None:
                        node_rows[(None, i, node.depth)] = logps[i][node.depth].clone()
                        for name, rows in teacher_logqs.items():
                            if i in rows:
                                node_rows[(name, i, node.depth)] = rows[i][node.depth].clone()
        for prefix, node in by_prefix.items():
            node.rollouts = tree.rollouts_through(prefix)
        return list(by_prefix.values())

    @staticmethod
    def _nodes_on_path(index: int, tokens: list[int], prio: np.ndarray, logp: torch.Tensor, pools: list[torch.Tensor], rcfg: RolloutConfig) -> list[AnalysisNode]:
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

    def _continue(self, tree: RolloutTree, work: list[tuple[AnalysisNode, int, int]], scfg: SamplingConfig, seed: int, cancel, adaptive: bool) -> list[Continuation]:
        """Force each (node, candidate) and sample ``n`` continuations; verify them."""
        student, tok = self.student, self.student.tokenizer
        eos = student.eos_token_ids
        requests, owners, out = [], [], []
        for node, cand, n in work:
            base = tree.rollouts[node.rollout_index]
            remaining = scfg.max_new_tokens - node.depth - 1
            if cand in eos or remaining <= 0:
                # The completion ends at the forced token: its outcome is determined, no sampling needed.
                ok = self._verify(tree.question, base.tokens[: node.depth] + [cand], tok, scfg.max_new_tokens)[0].correct
                out.extend(Continuation(node.rollout_index, node.depth, cand, [], ok, adaptive) for _ in range(n))
                continue
            tag = len([o for o in owners if o[0] is node and o[1] == cand])  # distinct stream per extra round
            requests.append(BranchRequest(
                prefix=tuple(tree.prompt_ids) + tuple(base.tokens[: node.depth]), forced=(cand,), n=n, max_new_tokens=remaining,
                seed=derive_seed(seed, tree.tree_id, node.rollout_index, node.depth, cand, adaptive, len(tree.continuations), tag),
            ))
            owners.append((node, cand))
        results = student.generate(requests, temperature=scfg.temperature, top_p=scfg.top_p, top_k=scfg.top_k, cancel=cancel) if requests else []
        for (node, cand), samples in zip(owners, results):
            base = tree.rollouts[node.rollout_index]
            for suffix in samples:
                ok = self._verify(tree.question, base.tokens[: node.depth] + [cand] + list(suffix), tok, scfg.max_new_tokens)[0].correct
                out.append(Continuation(node.rollout_index, node.depth, cand, list(suffix), ok, adaptive))
        return out

    def _adaptive(self, tree: RolloutTree, nodes: list[AnalysisNode], rcfg: RolloutConfig, scfg: SamplingConfig, seed: int, cancel,
                  targets: list[str], node_rows: dict) -> None:
        """Method.md step 6: spend extra continuations where they most reduce the error of what is reported.

        Nodes sharing a prefix (one position reached by several rollouts) share their children's counts
        and are planned together. A group's children are those the scorer will use: its forced
        candidates and every other child that rollouts reached often enough to join S(u)
        (``min_child_samples``); such a child, seen only in passing, would otherwise keep its few noisy
        visits whatever is spent. Objective (``allocation``): the sum over nodes, target teachers and
        methods of the standard error of cos(g*, d); with no target teacher, an even spread over the
        open children (weighted by how many nodes share them). Each of ``_ADAPTIVE_ROUNDS`` rounds
        re-reads the counts (S(u) may have grown), plans its share of the budget greedily,
        ``adaptive_batch`` continuations at a time to the child whose batch lowers the objective most
        (planned outcomes at the posterior mean), and runs them. Children whose outcome is already
        fixed (the forced token ends the completion) get none.
        """
        left = rcfg.adaptive_continuations
        eos = set(self.student.eos_token_ids)
        groups: dict[tuple[int, ...], dict] = {}
        for node in nodes:
            prefix = tuple(tree.rollouts[node.rollout_index].tokens[: node.depth])
            group = groups.setdefault(prefix, {"nodes": [], "forced": [], "depth": node.depth, "cands": None})
            group["nodes"].append(node)
            group["forced"].extend(c for c in node.candidates if c not in group["forced"])
        while left > 0:
            counter = tree.counter()
            for prefix, group in groups.items():
                group["counts"] = {c.token_id: c for c in counter.children(prefix)}
                seen = sorted(t for t, c in group["counts"].items() if c.visits >= rcfg.min_child_samples and t not in group["forced"])
                if group["forced"] + seen != group["cands"]:
                    self._adaptive_geometry(group, group["forced"] + seen, targets, node_rows)
            # Aimed at the teachers' directions where any exist (a group without one, e.g. no context for
            # its rollouts, has no cosine to improve); an even spread only when there is nothing to aim at.
            aim = any(group["directions"] for group in groups.values())
            group_list, models, weights = [], [], []
            for group in groups.values():
                if aim and not group["directions"]:
                    continue
                counts, cands = group["counts"], group["cands"]
                visits = [counts[c].visits if c in counts else 0 for c in cands]
                determined = [c in eos or scfg.max_new_tokens - group["depth"] - 1 <= 0 for c in cands]
                group_list.append(group)
                if aim:
                    successes = [counts[c].successes if c in counts else 0 for c in cands]
                    models.append(allocation.NodeErrorModel(group["p_tilde"], visits, successes, determined, group["directions"]))
                    weights.append(1.0)  # the objective has a term per node already
                else:
                    models.append(allocation.EvenSpread(visits, determined))
                    weights.append(float(len(group["nodes"])))
            heap: list[tuple[float, int, int, int]] = []
            version = [0] * len(models)

            def push(mi: int) -> None:
                for k, gain in enumerate(models[mi].child_gains(rcfg.adaptive_batch)):
                    if gain > 0:
                        heapq.heappush(heap, (-weights[mi] * float(gain), mi, k, version[mi]))

            for mi in range(len(models)):
                push(mi)
            planned: dict[tuple[int, int], int] = {}
            # Equal rounds: a doubling schedule (small early rounds) measured worse on the exact toy.
            round_left = min(left, max(rcfg.adaptive_batch, -(-rcfg.adaptive_continuations // _ADAPTIVE_ROUNDS)))
            while heap and round_left > 0:
                _, mi, k, ver = heapq.heappop(heap)
                if ver != version[mi]:
                    continue  # stale: the node's gains changed since this entry was pushed
                take = min(rcfg.adaptive_batch, round_left)
                models[mi].add(k, take)
                planned[(mi, k)] = planned.get((mi, k), 0) + take
                round_left -= take
                version[mi] += 1
                push(mi)
            if not planned:
                break  # every child's outcome is fixed: nothing left to learn
            work = []
            for (mi, k), n in sorted(planned.items()):
                group, cand = group_list[mi], group_list[mi]["cands"][k]
                if cand not in group["forced"]:
                    # A child seen in passing is now forced: its nodes' records say so.
                    group["forced"].append(cand)
                    for node in group["nodes"]:
                        node.candidates.append(cand)
                # Any node of the group has the prefix (the same draw for all); the first that forced it owns it.
                work.append((next(node for node in group["nodes"] if cand in node.candidates), cand, n))
                left -= n
            tree.continuations.extend(self._continue(tree, work, scfg, seed, cancel, adaptive=True))

    def _adaptive_geometry(self, group: dict, cands: list[int], targets: list[str], node_rows: dict) -> None:
        """A group's p~ over ``cands`` and its distillation directions: one per node x target teacher x method.

        Per-sample methods (single_sample, minillm) enter through their expectation over the sampled
        token, the reverse-KL direction. A node whose rollout has no context for a teacher has no row.
        """
        acfg = self.config.analysis
        first = group["nodes"][0]  # every node of a group has the same prefix, hence the same p
        p = node_rows[(None, first.rollout_index, first.depth)][cands].double().exp().numpy()
        group["cands"], group["p_tilde"], group["directions"] = cands, p / p.sum(), []
        methods = list(dict.fromkeys("reverse_kl" if m in ("single_sample", "minillm") else m for m in acfg.methods))
        for name in targets:
            for node in group["nodes"]:
                row = node_rows.get((name, node.rollout_index, node.depth))
                if row is None:
                    continue
                q = row[cands].double().exp().numpy()
                if q.sum() <= 0:
                    continue
                for method in methods:
                    group["directions"].append(G.direction(method, group["p_tilde"], q / q.sum(), jsd_beta=acfg.jsd_beta))

    # ------------------------------------------------------------------ ScoreTeacher
    def score_tree(
        self,
        tree: RolloutTree,
        teachers: Sequence[str],
        methods: Sequence[str],
        *,
        analysis: AnalysisConfig | None = None,
        cancel: CancelToken | None = None,
    ) -> list[AlignmentRecord]:
        """Per-node alignment records of each teacher x method on ``tree``."""
        acfg = analysis or self.config.analysis
        methods = [canonical_method(m) for m in methods] or list(acfg.methods)
        if not teachers:
            raise ConfigError("teachers", list(teachers), "name at least one teacher")
        for name in teachers:
            self._teacher(name)
        if tree.settings.get("student", {}).get("model_hash") not in (None, self.student.info.model_hash):
            raise PreconditionError(f"tree {tree.tree_id} was built by a different student model than the one loaded")
        scorer = TreeScorer(self.student, self.teachers, acfg, self._passes_screen, cancel)
        return scorer.records(tree, list(teachers), methods)


def check_budget(rollouts: RolloutConfig, sampling: SamplingConfig, max_tokens: int) -> None:
    """Refuse a request whose worst-case generated tokens exceed ``max_tokens`` (RESOURCE_EXHAUSTED)."""
    worst = (rollouts.num_rollouts + rollouts.max_continuations + rollouts.adaptive_continuations) * sampling.max_new_tokens
    if worst > max_tokens:
        raise BudgetError(
            f"worst case {worst} generated tokens (num_rollouts + max_continuations + adaptive_continuations) x max_new_tokens "
            f"exceeds the server's limit of {max_tokens}"
        )
