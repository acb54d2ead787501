"""A gradalign server whose engine never comes back from build_tree, for the SIGTERM test.

``python tests/stuck_server.py MODEL_DIR DB GRACE``: serves on a free port (logged as
``grpc_listening``) with the shutdown of ``gradalign serve``. The engine's build_tree sleeps and
ignores its cancel token: the worst a job can do to a shutdown.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_setup import tiny_config  # noqa: E402

from gradalign_engine.pipeline import Engine  # noqa: E402
from gradalign_server import configure_logging, create_server, install_stop_signals, serve_until_stopped  # noqa: E402


class StuckEngine:
    """The real engine, except that build_tree never returns and never looks at its cancel token."""

    def __init__(self, engine: Engine):
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def build_tree(self, *args, **kwargs):
        print("stuck_build_started", file=sys.stderr, flush=True)
        while True:
            time.sleep(0.5)


def main() -> int:
    model_dir, db, grace = sys.argv[1], sys.argv[2], float(sys.argv[3])
    configure_logging("info")
    stop = install_stop_signals()
    engine = StuckEngine(Engine(tiny_config(Path(model_dir))))
    server, _ = create_server(engine, "127.0.0.1:0", db, close_engine=True)
    return serve_until_stopped(server, stop, grace)


if __name__ == "__main__":
    sys.exit(main())
