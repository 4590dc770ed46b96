"""Labels in the store: what fine-tuning reads (``medssl ingest --labels TABLE`` writes them).

``STORE/labels/<volume_id>.nii.gz`` is a label map on exactly the grid of
``volumes/<volume_id>.nii.gz`` (same shape and affine, RAS+), ``uint8`` or ``uint16``;
0 is background. The manifest table ``labels`` holds one row per labelled volume: the
map's path and sha256, the structure names of its values, the diagnosis classes and the
world boxes (RAS mm). A volume may have classes or boxes without a map.

    records = read_labels("store")                 # volume_id -> LabelRecord
    mask = read_label_map("store", records[vid])   # [X, Y, Z] uint8/uint16
    names = structure_names("store")               # {1: "liver", ...}
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medssl.types import SplitSide

LABELS_DIR = "labels"
CLASSES_META_KEY = "label_classes"  # the table's diagnosis vocabulary (JSON list), when it gave one


@dataclass(frozen=True)
class Box:
    """An axis-aligned world box: ``min``/``max`` corners in RAS mm, ``min < max`` per axis."""

    label: str
    min: tuple[float, float, float]
    max: tuple[float, float, float]


@dataclass(frozen=True)
class LabelRecord:
    """The labels of one volume (a row of the ``labels`` table)."""

    volume_id: str
    mask_path: str | None  # relative to STORE; None when the case has no label map
    mask_sha256: str | None
    structures: dict[int, str]  # label value -> name; 0 is background and not listed
    classes: tuple[str, ...]
    boxes: tuple[Box, ...]


def read_labels(store: str | Path) -> dict[str, LabelRecord]:
    """Every labelled volume of ``store``: ``volume_id -> LabelRecord`` (``{}`` when none)."""
    rows = _query(store, "SELECT * FROM labels ORDER BY volume_id")
    return {row["volume_id"]: record_from_row(row) for row in rows or []}


def read_split(store: str | Path) -> dict[str, SplitSide]:
    """The sides the label table fixed: ``volume_id -> SplitSide`` for the cases that gave
    ``split:`` (``{}`` when none did: then the split hashes patients, :mod:`medssl.data.split`)."""
    rows = _query(store, "SELECT * FROM labels ORDER BY volume_id")
    return {row["volume_id"]: SplitSide(row["split"]) for row in rows or [] if row.get("split")}


def record_from_row(row: dict) -> LabelRecord:
    """A ``labels`` manifest row (JSON text columns) as a :class:`LabelRecord`."""
    structures = {int(k): str(v) for k, v in json.loads(row["structures"] or "{}").items()}
    boxes = tuple(
        Box(str(b["label"]), _triple(b["min"]), _triple(b["max"]))
        for b in json.loads(row["boxes"] or "[]")
    )
    return LabelRecord(
        volume_id=row["volume_id"],
        mask_path=row["mask_path"],
        mask_sha256=row["mask_sha256"],
        structures=dict(sorted(structures.items())),
        classes=tuple(json.loads(row["classes"] or "[]")),
        boxes=boxes,
    )


def read_label_map(store: str | Path, record: LabelRecord) -> np.ndarray:
    """The label map ``[X, Y, Z]`` (uint8/uint16) of ``record``, on its volume's grid.

    Raises ValueError when the record has no map or the file's sha256 differs from the
    manifest (the store was edited after ingest).
    """
    if record.mask_path is None:
        raise ValueError(f"volume {record.volume_id} has no label map (classes or boxes only)")
    data = (Path(store) / record.mask_path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != record.mask_sha256:
        raise ValueError(
            f"label map of volume {record.volume_id}: sha256 {digest[:12]} differs from the "
            f"manifest's {str(record.mask_sha256)[:12]}; re-run ingest with the label table"
        )
    img = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    array = np.asanyarray(img.dataobj)
    if array.dtype.kind not in "iu" or array.ndim != 3:
        raise ValueError(
            f"label map of volume {record.volume_id}: expected a 3D integer array, "
            f"got {array.dtype} {array.shape}"
        )
    return array


def structure_names(store: str | Path) -> dict[int, str]:
    """Union of every record's ``structures``; ValueError when two records name a value differently."""
    names: dict[int, str] = {}
    for record in read_labels(store).values():
        for value, name in record.structures.items():
            if names.setdefault(value, name) != name:
                raise ValueError(
                    f"label value {value} is '{names[value]}' in one record and '{name}' in "
                    f"volume {record.volume_id}: ingest tables with one structure vocabulary"
                )
    return dict(sorted(names.items()))


def class_names(store: str | Path) -> list[str]:
    """The table's diagnosis vocabulary when it gave one, else the sorted union of classes seen."""
    meta = _query(store, "SELECT value FROM meta WHERE key = ?", (CLASSES_META_KEY,))
    if meta:
        return list(json.loads(meta[0]["value"]))
    return sorted({c for record in read_labels(store).values() for c in record.classes})


def _triple(values) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in values)
    return (x, y, z)


def _query(store: str | Path, sql: str, params: tuple = ()) -> list[dict] | None:
    """Rows of a read-only query; None when the store, its manifest or the table is absent."""
    path = Path(store) / "manifest.sqlite"
    if not path.is_file():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute(sql, params)]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    finally:
        db.close()
