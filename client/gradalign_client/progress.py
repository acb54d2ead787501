"""Progress of long commands on stderr: questions done, the stage inside the current one, tokens/s, ETA.

On a terminal one line is redrawn in place; otherwise (a CI log, a pipe) a plain line is printed
every ``interval`` seconds and whenever a question finishes, so logs stay readable. Shared by
``analyze``, ``study``, ``vet``, ``demo`` and the server's model loading. Knows nothing of the engine:
callers feed it numbers (their stage names, counts and the student's generated-token counter).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressLine", "STAGE_SPAN", "format_seconds"]

# Where each stage of one question lies in [0, 1] of its work, for the ETA (measured shares of
# BuildTree on SmolLM2: continuations take most of it). Unknown stages count as half done.
STAGE_SPAN = {
    "queued": (0.0, 0.0),
    "rollouts": (0.0, 0.2),
    "nodes": (0.2, 0.25),
    "continuations": (0.25, 0.85),
    "adaptive": (0.85, 0.9),
    "scoring": (0.9, 1.0),
    "done": (1.0, 1.0),
}


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ProgressLine:
    """Progress over ``total`` units (questions), each going through stages."""

    def __init__(
        self,
        total: int,
        *,
        what: str = "q",
        stream: TextIO | None = None,
        interval: float = 10.0,
        enabled: bool = True,
        tty: bool | None = None,
    ):
        self.total = max(int(total), 0)
        self.what = what
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval
        self.started = time.monotonic()
        self.done_units = 0
        self._label, self._stage, self._fraction = "", "", 0.0
        self._tokens0: int | None = None
        self._tokens = 0
        self._last_print: float | None = None  # monotonic time of the last plain line (None: none yet)
        self._width = 0

    # ------------------------------------------------------------------ feeding
    def stage(self, label: str, stage: str, done: int, total: int, tokens: int | None = None) -> None:
        """The current unit (``label``) is in ``stage`` with ``done`` of ``total`` of its items."""
        lo, hi = STAGE_SPAN.get(stage, (0.5, 0.5))
        inner = done / total if total > 0 else 1.0
        self._label, self._stage = label, f"{stage} {done}/{total}" if total else stage
        self._fraction = lo + (hi - lo) * min(max(inner, 0.0), 1.0)
        self._count_tokens(tokens)
        self._show(final=False)

    def finish_unit(self, note: str, tokens: int | None = None) -> None:
        """One unit finished; ``note`` says how it went."""
        self.done_units += 1
        self._label, self._stage, self._fraction = note, "", 0.0
        self._count_tokens(tokens)
        self._show(final=True)

    def close(self) -> None:
        if self.enabled and self.tty and self._width:
            print(file=self.stream, flush=True)
            self._width = 0

    # ------------------------------------------------------------------ numbers
    def tokens_per_second(self) -> float | None:
        elapsed = time.monotonic() - self.started
        return self._tokens / elapsed if self._tokens and elapsed > 0 else None

    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far; None until some work is done."""
        progress = self.done_units + self._fraction
        if progress <= 0 or self.total == 0:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / progress * max(self.total - progress, 0.0)

    def _count_tokens(self, tokens: int | None) -> None:
        if tokens is None:
            return
        if self._tokens0 is None:
            self._tokens0 = tokens
        self._tokens = tokens - self._tokens0

    # ------------------------------------------------------------------ drawing
    def line(self) -> str:
        head = f"[{self.what} {min(self.done_units + (1 if self._stage else 0), self.total)}/{self.total}]"
        parts = [f"{head} {self._label}" if self._label else head]
        if self._stage:
            parts.append(self._stage)
        rate = self.tokens_per_second()
        if rate is not None:
            parts.append(f"{rate:.0f} tok/s")
        eta = self.eta_seconds()
        parts.append(f"elapsed {format_seconds(time.monotonic() - self.started)}")
        if eta is not None and self.done_units < self.total:
            parts.append(f"ETA {format_seconds(eta)}")
        return " | ".join(parts)

    def _show(self, final: bool) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        text = self.line()
        if self.tty:
            pad = max(self._width - len(text), 0)
            end = "\n" if final and self.done_units >= self.total else ""
            print("\r" + text + " " * pad, end=end, file=self.stream, flush=True)
            self._width = 0 if end else len(text)
        elif final or self._last_print is None or now - self._last_print >= self.interval:
            print(text, file=self.stream, flush=True)
            self._last_print = now
