"""Read a store the way a user or a downstream tool would: the sqlite file and the folder."""

from __future__ import annotations

import gzip
import hashlib
import json
import sqlite3
from pathlib import Path

from medssl.atomic import TMP_MARK

DOCUMENTED_VOLUME_COLUMNS = {
    "volume_id",
    "path",
    "modality",
    "shape",
    "spacing",
    "affine",
    "sha256",
    "source_kind",
    "deid",
    "created_at",
}
DOCUMENTED_REJECTED_COLUMNS = {"source_ref", "code", "message"}


def query(store: Path, sql: str, params: tuple = ()) -> list[dict]:
    db = sqlite3.connect(f"file:{Path(store) / 'manifest.sqlite'}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute(sql, params)]
    finally:
        db.close()


def columns(store: Path, table: str) -> set[str]:
    return {row["name"] for row in query(store, f"PRAGMA table_info({table})")}


def volumes(store: Path) -> list[dict]:
    return query(store, "SELECT * FROM volumes ORDER BY volume_id")


def volume_by_id(store: Path) -> dict[str, dict]:
    return {row["volume_id"]: row for row in volumes(store)}


def rejected(store: Path) -> list[dict]:
    return query(store, "SELECT * FROM rejected ORDER BY source_ref, unit")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def files(store: Path, sub: str = "") -> list[Path]:
    """Every regular file under ``store/sub``, hidden ones included, as paths relative to ``store``."""
    base = Path(store) / sub
    if not base.exists():
        return []
    return sorted(p.relative_to(store) for p in base.rglob("*") if p.is_file())


def temporaries(store: Path) -> list[Path]:
    return sorted(p for p in Path(store).rglob("*") if TMP_MARK in p.name)


def file_digests(store: Path, sub: str = "volumes") -> dict[str, str]:
    return {str(rel): sha256(Path(store) / rel) for rel in files(store, sub)}


def mtimes(store: Path, sub: str = "") -> dict[str, int]:
    return {
        str(rel): (Path(store) / rel).stat().st_mtime_ns
        for rel in files(store, sub)
        if not rel.name.startswith("manifest.sqlite")
    }


def is_complete_gzip(path: Path) -> bool:
    try:
        with gzip.open(path) as gz:
            while gz.read(1 << 20):
                pass
        return True
    except (OSError, EOFError):
        return False


def row_json(row: dict, column: str):
    return json.loads(row[column])
