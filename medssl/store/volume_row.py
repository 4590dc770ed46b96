"""One row of the manifest's ``volumes`` table, typed: :class:`VolumeRow`.

SQLite holds lists and objects as JSON text (``shape``, ``spacing``, ``affine``, ``corrections``,
``frames``, ``deid``); :meth:`VolumeRow.from_row` decodes them once, so every reader (plan,
caches, tools) uses attributes: ``row.shape`` is ``(X, Y, Z)`` or ``(X, Y, Z, T)`` voxels,
``row.spacing`` mm per axis, ``row.affine`` the 4x4 voxel -> RAS mm matrix as nested tuples.
:meth:`VolumeRow.to_row` gives the column values back in the form
:meth:`~medssl.store.manifest.Manifest.add_volume` takes, so writing a row and reading it
again gives an equal :class:`VolumeRow`. NULL stays None in every column.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medssl.types import GeometryKind, SourceKind


@dataclass(frozen=True)
class VolumeRow:
    """A stored volume as the manifest records it (columns: ``manifest.VOLUME_COLUMNS``).

    The three NOT NULL columns come first; the others follow in column order. ``frame`` is no
    column: :func:`~medssl.store.selection.frame_rows` sets it on the row of one frame of a 4D series
    (its index along the last axis); None for a row read from the manifest.
    """

    volume_id: str  # opaque, stable for the same source and key
    path: str  # relative to STORE
    sha256: str  # of the written file
    header_path: str | None = None  # de-identified DICOM header (JSON) beside the volume
    modality: str | None = None
    body_part: str | None = None
    ndim: int | None = None
    shape: tuple[int, ...] | None = None  # voxels per axis, RAS order (+ frames for 4D)
    spacing: tuple[float, ...] | None = None  # mm per axis
    affine: tuple[tuple[float, ...], ...] | None = None  # [4, 4] voxel -> RAS world mm
    axcodes: str | None = None  # "RAS" for every 3D volume; "2D" for projection images
    dtype: str | None = None
    nbytes: int | None = None
    source_kind: SourceKind | None = None
    source_ref: str | None = None  # opaque reference of the first source file
    source_digest: str | None = None  # keyed digest of the instances converted
    patient: str | None = None  # pseudonyms
    study: str | None = None
    series: str | None = None
    n_images: int | None = None
    slice_thickness: float | None = None
    kvp: float | None = None
    field_strength: float | None = None
    echo_time: float | None = None
    repetition_time: float | None = None
    manufacturer: str | None = None
    model: str | None = None
    kernel: str | None = None
    contrast: int | None = None
    corrections: tuple[str, ...] | None = None  # resampling / repair steps applied
    geometry: GeometryKind | None = None  # what the affine means (patient, projection, none)
    frames: tuple[dict[str, Any], ...] | None = None  # per frame of a 4D volume: b_value, b_vector, time_s, channel
    scaling: str | None = None  # how stored values became voxel values
    deid: dict[str, Any] | None = None  # method and profile edition
    created_at: str | None = None
    frame: int | None = None  # not a column: the frame of a 4D series this row stands for

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> VolumeRow:
        """A row of ``SELECT * FROM volumes`` (or a dict of column values); JSON text decoded here."""
        present = set(row.keys())  # sqlite3.Row: `in` would search its values
        raw = {f: row[f] for f in COLUMN_FIELDS if f in present}
        missing = [f for f in ("volume_id", "path", "sha256") if raw.get(f) is None]
        if missing:
            raise ValueError(f"volume row {raw.get('volume_id')!r}: no {', '.join(missing)}")
        for name, decode in _JSON_COLUMNS.items():
            if raw.get(name) is not None:
                raw[name] = decode(_json(raw[name]))
        for name, kind in (("source_kind", SourceKind), ("geometry", GeometryKind)):
            if raw.get(name) is not None:
                raw[name] = kind(raw[name])
        return cls(**raw)

    def to_row(self) -> dict[str, Any]:
        """Column -> value, lists and dicts as Python values (``add_volume`` writes them as JSON)."""
        out = {f: getattr(self, f) for f in COLUMN_FIELDS}
        for name in ("source_kind", "geometry"):
            out[name] = None if out[name] is None else str(out[name])
        for name in ("shape", "spacing", "corrections", "frames"):
            out[name] = None if out[name] is None else list(out[name])
        if self.affine is not None:
            out["affine"] = [list(r) for r in self.affine]
        return out


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# the columns stored as JSON text, and how each becomes its field's type
_JSON_COLUMNS = {
    "shape": lambda v: tuple(int(s) for s in v),
    "spacing": lambda v: tuple(float(s) for s in v),
    "affine": lambda v: tuple(tuple(float(x) for x in r) for r in v),
    "corrections": lambda v: tuple(str(c) for c in v),
    "frames": lambda v: tuple(dict(f) for f in v),
    "deid": dict,
}
COLUMN_FIELDS = tuple(f.name for f in dataclasses.fields(VolumeRow) if f.name != "frame")
