"""Exact full-vocabulary scoring on the vLLM engine: the scoring half of :class:`~.vllm_backend.VLLMBackend`.

:class:`VLLMScoring` is a mixin: it needs the backend's ``vocab_size``, ``max_model_len``, ``counters``,
``_cache_block`` (the prefix cache's block size, None without the cache) and ``_run`` (submit requests
and step the engine). How it works is in :mod:`.vllm_backend`'s docstring: every completion row's raw
logits from ``prompt_logprobs=-1``, taken off the engine as tensors (:class:`~.vllm_setup.PromptScoreCapture`),
in groups of bounded size, each group's contexts prefilled once under a scoring-only cache salt, and
any request whose cache hit reached into its completion scored again without the cache.

It knows token ids and vLLM's request objects; it knows nothing of trees or teachers.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import CancelToken
from .vllm_setup import SCORE_SALT, PromptScoreCapture, scoring_params

__all__ = ["GROUP_ROW_ELEMENTS", "VLLMScoring"]

# Rows x vocabulary entries scored per group of requests. vLLM keeps about six float32/int64 arrays of
# that size alive while it scores a step (logits, scores, the sorted values and their indices, the
# output), so 2**25 (128 MiB per float32 array) bounds a group to about a gigabyte.
GROUP_ROW_ELEMENTS = 1 << 25


class VLLMScoring:
    """score_vllm and its helpers (see the module docstring)."""

    def score_vllm(
        self,
        contexts: Sequence[Sequence[int]],
        completions: Sequence[Sequence[int]],
        *,
        temperature: float = 1.0,
        cancel: CancelToken | None = None,
    ):
        """Exact full-vocabulary log-probabilities computed by the vLLM engine (module docstring).

        Row t of pair i is log softmax(logits / temperature) of the next token given
        ``contexts[i] + completions[i][:t]``, from vLLM's logits of that prompt row.
        """
        import torch

        if len(contexts) != len(completions):
            raise ValueError("contexts and completions differ in length")
        if cancel is not None:
            cancel.raise_if_cancelled()
        out: list = [None] * len(contexts)
        todo = []
        for i, (ctx, comp) in enumerate(zip(contexts, completions)):
            if not comp:
                out[i] = torch.empty((0, self.vocab_size), dtype=torch.float32)
                continue
            self._check_scorable(ctx, comp)
            todo.append(i)
        logits = self._completion_logits(todo, contexts, completions, cancel)
        for i in todo:  # popped: one pair's raw logits and log-probabilities at a time, not all twice
            out[i] = torch.log_softmax(logits.pop(i) / temperature, dim=-1)
        self.counters.add(scored_tokens=sum(len(completions[i]) for i in todo))
        return out

    def _check_scorable(self, ctx: Sequence[int], comp: Sequence[int]) -> None:
        if not ctx:
            raise ValueError("scoring needs a non-empty context (the first token has no prediction)")
        if self.max_model_len is not None and len(ctx) + len(comp) + 1 > self.max_model_len:
            raise ValueError(
                f"context + completion ({len(ctx) + len(comp)} tokens) exceed the vLLM context ({self.max_model_len})"
            )

    def _completion_logits(self, todo: list[int], contexts, completions, cancel) -> dict:
        """Raw logits [len(completion), vocab] for each pair in ``todo``, scored in groups on vLLM."""
        logits: dict = {}
        redo: list[int] = []
        for group in self._groups(todo, contexts, completions, cached=True):
            self._prefill_contexts([contexts[i] for i in group], cancel)
            got, stale = self._score_group(group, contexts, completions, cancel, read_cache=True)
            logits.update(got)
            redo += stale
        for group in self._groups(redo, contexts, completions, cached=False):
            got, stale = self._score_group(group, contexts, completions, cancel, read_cache=False)
            if stale:
                raise RuntimeError("vLLM did not compute the prompt rows of a scoring request that skipped its cache")
            logits.update(got)
        return logits

    def _cached_prefix(self, context_len: int) -> int:
        """Context tokens a scoring request can read from the cache once its context is prefilled."""
        block = self._cache_block
        if not block or context_len - 1 < block:
            return 0
        return (context_len - 1) // block * block

    def _groups(self, indices: list[int], contexts, completions, *, cached: bool):
        """``indices`` in groups of at most GROUP_ROW_ELEMENTS computed rows x vocabulary, same contexts together."""
        first_seen: dict[tuple, int] = {}
        for i in indices:
            first_seen.setdefault(tuple(contexts[i]), len(first_seen))
        order = sorted(indices, key=lambda i: first_seen[tuple(contexts[i])])
        limit = max(GROUP_ROW_ELEMENTS // self.vocab_size, 1)
        group: list[int] = []
        rows = 0
        for i in order:
            n = len(contexts[i]) + len(completions[i]) - (self._cached_prefix(len(contexts[i])) if cached else 0)
            if group and rows + n > limit:
                yield group
                group, rows = [], 0
            group.append(i)
            rows += n
        if group:
            yield group

    def _prefill_contexts(self, contexts: list[Sequence[int]], cancel) -> None:
        """Put each distinct context but its last token in the scoring cache (salted: scoring requests only).

        The last token stays out so that a cache hit never covers the row that predicts the first
        completion token. Contexts shorter than a cache block are left alone: nothing of them can
        be cached.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prefixes = {tuple(c[:-1]) for c in contexts if self._cached_prefix(len(c))}
        if not prefixes:
            return
        prompts = [TokensPrompt(prompt_token_ids=list(p), cache_salt=SCORE_SALT) for p in sorted(prefixes)]
        params = [SamplingParams(max_tokens=1, temperature=0.0, detokenize=False) for _ in prompts]
        outputs = self._run(prompts, params, cancel)
        self.counters.add(forwarded_tokens=sum(_computed_tokens(p, o) for p, o in zip(prompts, outputs)))

    def _score_group(self, group: list[int], contexts, completions, cancel, *, read_cache: bool):
        """Score one group on vLLM: ({pair: raw logits}, pairs whose rows were not computed)."""
        import torch
        from vllm.inputs import TokensPrompt

        prompts = [
            TokensPrompt(prompt_token_ids=list(contexts[i]) + list(completions[i]), cache_salt=SCORE_SALT)
            for i in group
        ]
        # Row j of a prompt's scores predicts prompt token j + 1: completion token t is row len(context) - 1 + t.
        wanted = [(len(contexts[i]) - 1, torch.tensor(list(completions[i]), dtype=torch.long)) for i in group]
        capture = PromptScoreCapture(wanted, self.vocab_size)
        params = [scoring_params(read_cache=read_cache) for _ in prompts]
        outputs = self._run(prompts, params, cancel, capture=capture)
        got, stale = {}, []
        for i, prompt, output, rows in zip(group, prompts, outputs, capture.rows):
            cached = getattr(output, "num_cached_tokens", None)
            # A cache hit past the context's last token leaves completion rows uncomputed.
            hit_too_far = read_cache and (cached is None or cached > len(contexts[i]) - 1)
            if rows is None or hit_too_far:
                stale.append(i)
            else:
                got[i] = rows
        self.counters.add(forwarded_tokens=sum(_computed_tokens(p, o) for p, o in zip(prompts, outputs)))
        return got, stale


def _computed_tokens(prompt, output) -> int:
    """Prompt positions vLLM ran through the model for one request (those not read from the prefix cache)."""
    return max(len(prompt["prompt_token_ids"]) - (getattr(output, "num_cached_tokens", None) or 0), 0)
