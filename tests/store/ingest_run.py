"""Run ``ingest`` quietly in tests and pick rows out of the result."""

from __future__ import annotations

from pathlib import Path

from medssl.store.ingest import IngestOptions, IngestSummary, ingest
from tests.store import store_view as sv

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))


def run(sources, store: Path, key: bytes = KEY, **options) -> IngestSummary:
    """``ingest`` of one source or a list of them, without progress bars."""
    sources = sources if isinstance(sources, (list, tuple)) else [sources]
    return ingest([str(s) for s in sources], store, key, IngestOptions(progress=False, **options))


def only(rows: list[dict], **where) -> dict:
    found = [r for r in rows if all(r[k] == v for k, v in where.items())]
    assert len(found) == 1, f"expected one row with {where}, found {len(found)}"
    return found[0]


def single_volume(store: Path) -> dict:
    rows = sv.volumes(store)
    assert len(rows) == 1, [r["n_images"] for r in rows]
    return rows[0]
