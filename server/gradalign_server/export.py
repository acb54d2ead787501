"""``gradalign export``: every alignment record a server has stored, as JSONL (the one dialect).

Reads the SQLite store directly (the server may be running: the store is in WAL mode) and writes one
``gradalign_client.canonical`` line per record, the same bytes ``analyze --out`` and ``vet --out``
write for the same records.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradalign_client.canonical import json_line

from ._store import Store
from ._wire import decode_records

__all__ = ["export_records", "main"]


def export_records(store: Store, path: str | Path, include_prefix_ids: bool = False) -> int:
    """Write every stored record to ``path`` (prefix ids only on request, as the stream does); return how many."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for blob in store.record_blobs():
            for record in decode_records(blob):
                if not include_prefix_ids:
                    record.prefix_token_ids = None
                fh.write(json_line(record.to_dict()) + "\n")
                count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradalign export", description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="the server's SQLite store (gradalign serve --db)")
    parser.add_argument("--out", required=True, help="JSONL file to write")
    parser.add_argument("--include-prefix-ids", action="store_true", help="keep each node's prefix token ids")
    args = parser.parse_args(argv)
    if not Path(args.db).is_file():
        print(f"gradalign export: --db {args.db!r}: no such store", file=sys.stderr)
        return 2
    store = Store(args.db)
    try:
        count = export_records(store, args.out, args.include_prefix_ids)
    finally:
        store.close()
    print(f"{count} records written to {args.out}", file=sys.stderr)
    return 0
