"""SQLite store of trees, per-(tree, teacher, method) records and reports; survives restarts.

Rows are only ever inserted (or replaced by identical deterministic content), never deleted by a
request, so a bad request cannot lose stored work. Payloads are zlib-compressed: trees as the JSON of
``RolloutTree.to_dict()``, reports as the JSON of ``Report.to_dict()``, and records as the opaque bytes
the service encodes (a ``gradalign.v1.RecordBatch``). The database runs in WAL mode so readers never
block the writer. A store of schema 1 is upgraded in place: its records and reports (caches derived
from the trees) are dropped and recomputed on demand; its trees are kept.

One connection guarded by a lock: the service writes a few rows per job, never enough to contend.
Knows nothing of gRPC or the engine's classes: it stores plain dicts under string keys.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import zlib
from pathlib import Path
from typing import Any

__all__ = ["Store", "SCHEMA_VERSION"]

SCHEMA_VERSION = 2  # 2: records are protobuf RecordBatch blobs (1: zlib JSON lists)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trees (
    tree_id TEXT PRIMARY KEY,
    question_id TEXT NOT NULL,
    created REAL NOT NULL,
    summary TEXT NOT NULL,          -- TreeSummary as JSON (readable with the sqlite3 shell)
    data BLOB NOT NULL              -- zlib(JSON of RolloutTree.to_dict())
);
CREATE TABLE IF NOT EXISTS records (
    tree_id TEXT NOT NULL,
    teacher TEXT NOT NULL,
    method TEXT NOT NULL,
    analysis_key TEXT NOT NULL,     -- hash of the settings the records depend on
    created REAL NOT NULL,
    count INTEGER NOT NULL,
    data BLOB NOT NULL,             -- zlib(gradalign.v1.RecordBatch bytes)
    PRIMARY KEY (tree_id, teacher, method, analysis_key)
);
CREATE TABLE IF NOT EXISTS reports (
    report_key TEXT PRIMARY KEY,
    created REAL NOT NULL,
    request TEXT NOT NULL,          -- what produced it (tree ids, teachers, methods, settings), JSON
    data BLOB NOT NULL              -- zlib(JSON of Report.to_dict())
);
"""


def _pack(value: Any) -> bytes:
    return zlib.compress(json.dumps(value, separators=(",", ":")).encode("utf-8"), 6)


def _unpack(blob: bytes) -> Any:
    return json.loads(zlib.decompress(blob).decode("utf-8"))


class Store:
    """Persistent storage of the service's work. Thread-safe.

    Parameters
    ----------
    path : str or Path
        SQLite file (created with its folder); ``":memory:"`` keeps everything in memory.
    """

    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        with self._lock:
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is not None and int(row[0]) == 1:  # records were JSON: drop the derived caches, keep the trees
                self._db.executescript("DROP TABLE records; DROP TABLE reports;")
                self._db.executescript(_SCHEMA)
                self._db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
            elif row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: store schema {row[0]}, this server reads {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- trees -----------------------------------------------------------------------------------

    def get_tree(self, tree_id: str) -> dict[str, Any] | None:
        """The stored ``RolloutTree.to_dict()``, or None."""
        with self._lock:
            row = self._db.execute("SELECT data FROM trees WHERE tree_id=?", (tree_id,)).fetchone()
        return None if row is None else _unpack(row[0])

    def get_tree_summary(self, tree_id: str) -> dict[str, Any] | None:
        """The stored TreeSummary dict (cheap: no tree payload), or None."""
        with self._lock:
            row = self._db.execute("SELECT summary FROM trees WHERE tree_id=?", (tree_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_tree(self, tree_id: str, question_id: str, summary: dict[str, Any], tree: dict[str, Any]) -> None:
        """Store a tree; a tree id already present keeps its first copy (content-addressed)."""
        blob = _pack(tree)
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO trees VALUES (?, ?, ?, ?, ?)",
                (tree_id, question_id, time.time(), json.dumps(summary), blob),
            )

    def count_trees(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM trees").fetchone()[0]

    # -- records ---------------------------------------------------------------------------------

    def get_records(self, tree_id: str, teacher: str, method: str, analysis_key: str) -> bytes | None:
        """The stored record blob of one (tree, teacher, method, settings), or None when not scored."""
        with self._lock:
            row = self._db.execute(
                "SELECT data FROM records WHERE tree_id=? AND teacher=? AND method=? AND analysis_key=?",
                (tree_id, teacher, method, analysis_key),
            ).fetchone()
        return None if row is None else zlib.decompress(row[0])

    def put_records(
        self, tree_id: str, teacher: str, method: str, analysis_key: str, blob: bytes, count: int = 0
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                (tree_id, teacher, method, analysis_key, time.time(), count, zlib.compress(blob, 6)),
            )

    def record_blobs(self) -> list[bytes]:
        """Every stored record blob, in (tree, teacher, method) order (for exports)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT data FROM records ORDER BY tree_id, teacher, method, analysis_key"
            ).fetchall()
        return [zlib.decompress(row[0]) for row in rows]

    # -- reports ---------------------------------------------------------------------------------

    def get_report(self, report_key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM reports WHERE report_key=?", (report_key,)).fetchone()
        return None if row is None else _unpack(row[0])

    def put_report(self, report_key: str, request: dict[str, Any], report: dict[str, Any]) -> None:
        blob = _pack(report)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO reports VALUES (?, ?, ?, ?)",
                (report_key, time.time(), json.dumps(request, sort_keys=True), blob),
            )
