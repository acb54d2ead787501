"""Headless chromium for the HTML report's tests, its benchmark and its screenshots: plain flags, no driver.

``--dump-dom`` returns the DOM after the page's scripts ran; the report, opened with ``#selftest``,
writes what it shows (counts, the node panel after a click, every console error) into
``#selftest-result``, which :func:`selftest` reads back. Knows chromium's command line, not the report.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["find_chromium", "dump_dom", "selftest", "screenshot"]

_RESULT = re.compile(r'<pre id="selftest-result"[^>]*>(.*?)</pre>', re.S)


def find_chromium() -> str | None:
    """The chromium binary: $GRADALIGN_CHROMIUM, else chromium, chromium-browser, google-chrome on PATH."""
    named = os.environ.get("GRADALIGN_CHROMIUM")
    if named:
        return shutil.which(named)  # a name or a path; None when it is not there
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(args: list[str], timeout: float) -> tuple[str, float]:
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary (apt-get install chromium)")
    # A fresh profile per run: parallel runs do not share a lock, and nothing is left behind.
    with tempfile.TemporaryDirectory(prefix="gradalign-chromium-") as profile:
        cmd = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout, seconds


def dump_dom(page: str | Path, fragment: str = "", *, budget_ms: int = 3000, timeout: float = 90) -> tuple[str, float]:
    """The DOM of ``page`` after its scripts ran, and the seconds chromium took (start to exit)."""
    url = Path(page).resolve().as_uri() + (f"#{fragment}" if fragment else "")
    return _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout)


def selftest(page: str | Path, *, timeout: float = 90) -> tuple[dict, float]:
    """What the report's ``#selftest`` wrote into the DOM, and the seconds chromium took."""
    dom, seconds = dump_dom(page, "selftest", timeout=timeout)
    match = _RESULT.search(dom)
    if match is None or not match.group(1).strip():
        raise AssertionError(f"the page wrote no self-test result; DOM starts: {dom[:500]!r}")
    return json.loads(html.unescape(match.group(1))), seconds


def screenshot(
    page: str | Path, png: str | Path, *, width: int = 1400, height: int = 3000, timeout: float = 90
) -> tuple[Path, float]:
    """A PNG of the page at ``width`` x ``height`` CSS pixels, and the seconds chromium took (start to exit).

    Chromium takes the screenshot once the page has loaded, run its scripts and painted, so the time
    less that of a blank page is what opening the page costs.
    """
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    url = Path(page).resolve().as_uri()
    args = ["--virtual-time-budget=3000", f"--window-size={width},{height}", f"--screenshot={png}", url]
    _, seconds = _run(args, timeout)
    if not png.exists() or png.stat().st_size == 0:
        raise AssertionError(f"chromium wrote no screenshot to {png}")
    return png, seconds
