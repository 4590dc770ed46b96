"""``STORE/manifest.sqlite``: what the store holds (``volumes``, ``labels``) and what it refused (``rejected``).

Only the ingest main process writes; each row is committed right after its file is in
place, so a killed run leaves a manifest that matches the files, and the next run
continues from there. Every value is a pseudonym or a non-identifying fact. Volume rows are
written as dicts of column values and read back as :class:`~medssl.store.volume_row.VolumeRow`
(JSON columns decoded).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from medssl.store.volume_row import VolumeRow

SCHEMA_VERSION = 1

VOLUME_COLUMNS: dict[str, str] = {
    "volume_id": "TEXT PRIMARY KEY",  # opaque, stable for the same source and key
    "path": "TEXT NOT NULL",  # relative to STORE
    "header_path": "TEXT",  # de-identified DICOM header (JSON) beside the volume, if DICOM
    "modality": "TEXT",
    "body_part": "TEXT",
    "ndim": "INTEGER",
    "shape": "TEXT",  # JSON list
    "spacing": "TEXT",  # JSON list, mm
    "affine": "TEXT",  # JSON 4x4, voxel -> RAS world mm
    "axcodes": "TEXT",  # "RAS" for every 3D volume; "2D" for projection images
    "dtype": "TEXT",
    "sha256": "TEXT NOT NULL",  # of the written file
    "nbytes": "INTEGER",
    "source_kind": "TEXT",
    "source_ref": "TEXT",  # opaque reference of the first source file
    "source_digest": "TEXT",  # keyed digest of the instances converted: a changed series is reconverted
    "patient": "TEXT",  # pseudonyms: group volumes without identifying anyone
    "study": "TEXT",
    "series": "TEXT",
    "n_images": "INTEGER",
    "slice_thickness": "REAL",
    "kvp": "REAL",
    "field_strength": "REAL",
    "echo_time": "REAL",
    "repetition_time": "REAL",
    "manufacturer": "TEXT",
    "model": "TEXT",
    "kernel": "TEXT",
    "contrast": "INTEGER",
    "corrections": "TEXT",  # JSON list of resampling / repair steps applied
    "geometry": "TEXT",  # GeometryKind: "patient" (true world affine), "projection" or "none" (2D, pixel spacing only)
    "frames": "TEXT",  # JSON list, one per frame of a 4D volume: b_value, b_vector (LPS), time_s, channel; NULL for 3D
    "scaling": "TEXT",  # how stored values became voxel values: "rescale" (modality LUT) or "philips_precise"
    "deid": "TEXT",  # JSON: method and profile edition
    "created_at": "TEXT",
}

REJECTED_COLUMNS: dict[str, str] = {
    "source_ref": "TEXT NOT NULL",
    "unit": "TEXT NOT NULL",  # "file", or the would-be volume id of a refused stack
    "code": "TEXT NOT NULL",
    "message": "TEXT NOT NULL",
    "quarantine_path": "TEXT",
    "created_at": "TEXT",
}


LABEL_COLUMNS: dict[str, str] = {
    "volume_id": "TEXT PRIMARY KEY",  # the labelled volume (volumes.volume_id)
    "mask_path": "TEXT",  # labels/<volume_id>.nii.gz, relative to STORE; NULL without a map
    "mask_sha256": "TEXT",  # of the written label map
    "structures": "TEXT",  # JSON {"1": "liver"}: label value -> name (0 = background, unlisted)
    "classes": "TEXT",  # JSON list of diagnosis classes
    "boxes": "TEXT",  # JSON list of {"label", "min", "max"}: RAS mm corners
    "label_digest": "TEXT",  # keyed digest of mask bytes, table row and image: a change is rewritten
    "corrections": "TEXT",  # JSON list, e.g. the map was resampled onto the image grid
    "created_at": "TEXT",
    "split": "TEXT",  # "train" | "val" when the label table fixes the case's side; NULL: hashed
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Manifest:
    """A thin, typed door to the store's SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        with self.db:
            self.db.execute(_create("volumes", VOLUME_COLUMNS))
            self.db.execute(_create("rejected", REJECTED_COLUMNS, "PRIMARY KEY (source_ref, unit)"))
            self.db.execute(_create("labels", LABEL_COLUMNS))
            self.db.execute("CREATE TABLE IF NOT EXISTS sources_done (source_ref TEXT PRIMARY KEY, created_at TEXT)")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            for table, columns in (("volumes", VOLUME_COLUMNS), ("labels", LABEL_COLUMNS)):
                present = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
                for name, kind in columns.items():  # a store from an older medssl gains new columns
                    if name not in present:
                        self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind.replace('PRIMARY KEY', '').replace('NOT NULL', '')}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # volumes ------------------------------------------------------------------------------
    def volume(self, volume_id: str) -> VolumeRow | None:
        row = self.db.execute("SELECT * FROM volumes WHERE volume_id = ?", (volume_id,)).fetchone()
        return None if row is None else VolumeRow.from_row(row)

    def add_volume(self, row: dict) -> None:
        """Insert or replace one volume: ``row`` maps column -> value (lists and dicts as JSON);
        ``VolumeRow.to_row()`` gives one."""
        values = {k: _sql(row.get(k)) for k in VOLUME_COLUMNS}
        values["created_at"] = values["created_at"] or _now()
        unknown = set(row) - set(VOLUME_COLUMNS)
        if unknown:
            raise ValueError(f"unknown volume columns: {sorted(unknown)}")
        with self.db:
            self.db.execute(
                f"INSERT OR REPLACE INTO volumes ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()),
            )

    def volumes(self) -> list[VolumeRow]:
        return [VolumeRow.from_row(r) for r in self.db.execute("SELECT * FROM volumes ORDER BY volume_id")]

    # labels -------------------------------------------------------------------------------
    def label(self, volume_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM labels WHERE volume_id = ?", (volume_id,)).fetchone()
        return None if row is None else dict(row)

    def add_label(self, row: dict) -> None:
        unknown = set(row) - set(LABEL_COLUMNS)
        if unknown:
            raise ValueError(f"unknown label columns: {sorted(unknown)}")
        values = {k: _sql(row.get(k)) for k in LABEL_COLUMNS}
        values["created_at"] = values["created_at"] or _now()
        with self.db:
            self.db.execute(
                f"INSERT OR REPLACE INTO labels ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()),
            )

    def delete_label(self, volume_id: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM labels WHERE volume_id = ?", (volume_id,))

    def labels(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM labels ORDER BY volume_id")]

    # rejected -----------------------------------------------------------------------------
    def add_rejected(self, source_ref: str, unit: str, code: str, message: str, quarantine_path: str | None) -> bool:
        """Record a refusal once; returns False if it was already recorded."""
        with self.db:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO rejected VALUES (?, ?, ?, ?, ?, ?)",
                (source_ref, unit, str(code), message, quarantine_path, _now()),
            )
        return cur.rowcount == 1

    def add_rejected_many(self, rows: list[tuple[str, str, str, str, str | None]]) -> list[bool]:
        """:meth:`add_rejected` for many rows in one transaction; which of them were new."""
        added = []
        with self.db:
            for row in rows:
                cur = self.db.execute("INSERT OR IGNORE INTO rejected VALUES (?, ?, ?, ?, ?, ?)", (*row[:2], str(row[2]), *row[3:], _now()))
                added.append(cur.rowcount == 1)
        return added

    def rejected(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM rejected ORDER BY source_ref, unit")]

    def clear_rejected(self, source_ref: str, unit: str) -> None:
        """Forget a refusal once the unit converted (e.g. a rerun with --irregular resample)."""
        with self.db:
            self.db.execute("DELETE FROM rejected WHERE source_ref = ? AND unit = ?", (source_ref, unit))

    def clear_rejected_unit(self, unit: str) -> None:
        """Forget every refusal of ``unit`` (a label accepted after a fixed table or mask)."""
        with self.db:
            self.db.execute("DELETE FROM rejected WHERE unit = ?", (unit,))

    # remote sources -----------------------------------------------------------------------
    def source_done(self, source_ref: str) -> bool:
        return self.db.execute("SELECT 1 FROM sources_done WHERE source_ref = ?", (source_ref,)).fetchone() is not None

    def mark_source_done(self, source_ref: str) -> None:
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO sources_done VALUES (?, ?)", (source_ref, _now()))


def _create(table: str, columns: dict[str, str], extra: str = "") -> str:
    cols = ", ".join(f"{name} {kind}" for name, kind in columns.items())
    return f"CREATE TABLE IF NOT EXISTS {table} ({cols}{', ' + extra if extra else ''})"


def _sql(value):
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value
