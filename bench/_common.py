"""What every bench script shares: import paths, the ``--smoke`` flag, a tiny model and the JSON result.

Importing this module puts the repository root and ``tests/`` on ``sys.path`` (for ``gradalign_engine``,
tests/conftest.py's ``make_tiny_model_dir`` and tests/exact_toy.py), so a script imports it before
those (isort keeps ``_common`` first among the third-party imports). ``--smoke`` runs a bench's own
code path end to end on tiny settings, in seconds (bench/run_smoke.sh, called by CI); its results go to
bench/results/smoke/, which git ignores, so a smoke run never overwrites the committed results.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

for _path in (ROOT / "tests", ROOT):  # the root ends up first
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def parse_args(parser: argparse.ArgumentParser, smoke: dict, argv=None) -> argparse.Namespace:
    """Parse with a ``--smoke`` flag added; with it, ``smoke`` replaces the defaults (explicit options still win)."""
    parser.add_argument(
        "--smoke", action="store_true", help="tiny settings, end to end in seconds; results under bench/results/smoke/"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**smoke)
        args = parser.parse_args(argv)
    return args


def result_path(name: str, smoke: bool) -> Path:
    """bench/results/<name>.json, or bench/results/smoke/<name>.json for a smoke run."""
    return (RESULTS / "smoke" if smoke else RESULTS) / f"{name}.json"


def write_result(name: str, payload: dict, smoke: bool, out: str | Path | None = None) -> Path:
    """Write ``payload`` as JSON to ``out``, else to :func:`result_path`; return the path written."""
    path = Path(out) if out else result_path(name, smoke)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"[bench] wrote {path}", file=sys.stderr)
    return path


def tiny_model_dir() -> Path:
    """A tiny random-weight Llama (tests/conftest.py) in a temporary folder removed at exit."""
    from conftest import make_tiny_model_dir

    tmp = Path(tempfile.mkdtemp(prefix="gradalign-bench-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return make_tiny_model_dir(tmp / "tiny")


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a timer measures it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def matmul_flops(dtype: str, n: int, seconds: float, device: str = "cpu", repeats: int = 1) -> float:
    """The hardware ceiling: the best FLOP/s of ``repeats`` n x n matmuls in ``dtype``, timed again and again.

    One timing per matmul on the CPU (bench_buildtree), a batch of them on a GPU, where one launch
    is too short to time (gpu_check).
    """
    import time

    import torch

    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
        best = max(best, repeats * 2 * n**3 / (time.perf_counter() - t0))
    return best


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every model bench shares: --model, --tiny, --kv-gib, --dtype, --seed."""
    parser.add_argument("--model", default="smollm2-135m", help="model name or directory (default smollm2-135m)")
    parser.add_argument("--tiny", action="store_true", help="use the tiny random test model instead")
    parser.add_argument("--kv-gib", type=float, default=1.0, help="vLLM KV cache in GiB (default 1)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
