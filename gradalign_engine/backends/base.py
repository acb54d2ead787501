"""The backend interface: what the engine asks of an inference engine, in token ids only.

Two operations cover the whole method:
- ``generate``: sample student continuations after shared prefixes (base rollouts are the special
  case "prompt, no forced token"; targeted continuations force a candidate token first).
- ``score``: teacher-forced next-token log-probabilities at every position of a completion.

A backend knows nothing of trees, teachers, verifiers or gRPC. Backends are chosen by name in
:func:`gradalign_engine.backends.load_backend`, which imports heavy libraries (vllm) lazily.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..errors import Cancelled

__all__ = [
    "BranchRequest",
    "ModelInfo",
    "Backend",
    "CancelToken",
    "Cancelled",
    "WorkCounters",
]


class CancelToken:
    """A thread-safe flag the job layer sets; backends check it between decoding steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = "cancelled"

    def cancel(self, reason: str = "cancelled") -> None:
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled(self.reason)


@dataclass(frozen=True)
class BranchRequest:
    """Sample continuations after one shared prefix.

    ``prefix`` is the full context (prompt + completion so far). For each token in ``forced`` the
    backend appends that token and samples ``n`` continuations after it; with ``forced`` empty it
    samples ``n`` continuations directly after the prefix. Results exclude the prefix and the
    forced token, and end at (and include) an end-of-sequence token or at ``max_new_tokens``.
    """

    prefix: tuple[int, ...]
    forced: tuple[int, ...] = ()
    n: int = 1
    max_new_tokens: int = 256
    seed: int = 0

    @property
    def branches(self) -> list[int | None]:
        return list(self.forced) if self.forced else [None]


@dataclass(frozen=True)
class ModelInfo:
    """What a receipt records about a loaded model."""

    name: str
    path: str
    backend: str
    dtype: str
    device: str
    model_hash: str  # sha256 over the weight files (or their names and sizes when huge)
    tokenizer_hash: str  # sha256 over vocabulary, special tokens and chat template
    vocab_size: int


@dataclass
class WorkCounters:
    """Tokens a backend has processed; read by benchmarks and metrics."""

    generated_tokens: int = 0  # tokens sampled
    forwarded_tokens: int = 0  # token positions run through the model (prefill + decode)
    scored_tokens: int = 0  # completion positions returned by score()
    forward_calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {
                "generated_tokens": self.generated_tokens,
                "forwarded_tokens": self.forwarded_tokens,
                "scored_tokens": self.scored_tokens,
                "forward_calls": self.forward_calls,
            }


@runtime_checkable
class Backend(Protocol):
    """An inference engine holding one model and its tokenizer."""

    info: ModelInfo
    tokenizer: object  # a transformers PreTrainedTokenizerBase (text <-> ids, chat template)
    counters: WorkCounters

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a completion."""

    @property
    def context_length(self) -> int | None:
        """The longest sequence (prompt + completion) the model takes, or None when it has no limit."""

    def generate(
        self,
        requests: Sequence[BranchRequest],
        *,
        temperature: float,
        top_p: float,
        top_k: int,
        cancel: CancelToken | None = None,
        retain: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[list[list[int]]]:
        """Sample continuations.

        ``progress(samples_done, samples_total)``, when given, is called from time to time while
        sampling (the engine shows it; a backend that cannot report may accept and ignore it).

        ``retain=True`` hints that later calls will continue from prefixes of these samples and
        score them teacher-forced; a backend may keep their state (the HF backend keeps KV caches and
        hidden states; vLLM's automatic prefix cache needs no hint and ignores it).

        Returns ``out[i][b]``: for request i, the ``len(branches) * n`` sampled continuations,
        grouped by branch (branch-major: the n samples of forced[0], then of forced[1], ...).
        Deterministic for a given request list (seeds are in the requests).
        """

    def score(
        self,
        contexts: Sequence[Sequence[int]],
        completions: Sequence[Sequence[int]],
        *,
        temperature: float = 1.0,
        cancel: CancelToken | None = None,
    ):
        """Teacher-forced log-probabilities.

        Returns one float32 tensor per pair, shape ``[len(completion), vocab]``: row t is
        log softmax(logits / temperature) of the next token given context + completion[:t].
        Exact over the full vocabulary; a backend that cannot be exact must raise
        NotImplementedError rather than approximate.
        """

    def close(self) -> None:
        """Release the model (and any engine processes)."""
