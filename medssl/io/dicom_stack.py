"""Group slice records into consistent stacks and check their geometry.

Group by SeriesInstanceUID, then split what must never share a volume (orientation,
image size, echo, temporal position, stack id), as dcm2niix does. Sort along the slice
normal ``n = row_cosine x column_cosine`` by ``d = IPP . n``: never by file name or
InstanceNumber. Then classify the spacing: regular, missing slices (gaps that are whole
multiples of the step), uneven, or sheared by gantry tilt. What happens to an irregular
stack is the caller's policy (reject, or resample in ``dicom_volume``).
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from medssl.errors import IngestError
from medssl.io.dicom_scan import SliceRecord
from medssl.types import RejectReason

POSITION_TOL_MM = 1e-3  # two slices closer than this along the normal share a position
TILT_TOL_DEG = 0.01


@dataclass(frozen=True)
class Stack:
    """Records of one future volume, sorted along the slice normal.

    ``kind``: "volume" (a 3D stack of 2D images), "mosaic" (one Siemens mosaic file),
    "image2d" (a projection image without patient geometry, e.g. a radiograph).
    """

    records: tuple[SliceRecord, ...]
    kind: str
    positions: tuple[float, ...] = ()  # d = IPP . n for each record, ascending
    normal: tuple[float, float, float] | None = None
    step: float = 0.0  # regular slice spacing in mm (the smallest step when slices are missing)
    irregularity: RejectReason | None = None  # MISSING_SLICES, UNEVEN_SPACING, GANTRY_TILT
    detail: str = ""
    tilt_deg: float = 0.0

    @property
    def first(self) -> SliceRecord:
        return self.records[0]

    def identity(self) -> str:
        """A string naming this stack stably across runs (series + split + geometry)."""
        r = self.first
        iop = tuple(round(v, 3) for v in r.iop) if r.iop else None
        frames = (r.sop_uid,) if self.kind != "volume" else ()
        raw = repr((r.series_uid, self.kind, r.split_key, iop, r.rows, r.cols, frames))
        return hashlib.sha256(raw.encode()).hexdigest()


def build_stacks(records: list[SliceRecord]) -> tuple[list[Stack], list[tuple[list[SliceRecord], IngestError]]]:
    """Stacks from records of any number of series; failures per group, never raised."""
    by_series: dict[str, list[SliceRecord]] = defaultdict(list)
    for rec in records:
        by_series[rec.series_uid].append(rec)
    stacks: list[Stack] = []
    failed: list[tuple[list[SliceRecord], IngestError]] = []
    for series_uid in sorted(by_series):
        groups: dict[tuple, list[SliceRecord]] = defaultdict(list)
        for rec in by_series[series_uid]:
            if rec.mosaic_tiles:
                stacks.append(Stack((rec,), "mosaic"))
            elif rec.ipp is None or rec.iop is None:
                stacks.append(Stack((rec,), "image2d"))
            else:
                iop = tuple(round(v, 3) for v in rec.iop)
                groups[(iop, rec.rows, rec.cols, rec.split_key, rec.samples_per_pixel)].append(rec)
        for key in sorted(groups, key=repr):
            for part in _split_duplicates(groups[key]):
                try:
                    stacks.append(_sorted_stack(part))
                except IngestError as err:
                    failed.append((part, err))
    return stacks, failed


def _split_duplicates(recs: list[SliceRecord]) -> list[list[SliceRecord]]:
    """Drop repeated copies of one SOP instance; split repeated acquisitions apart."""
    best_copy: dict[str, SliceRecord] = {}
    # copies of one instance: keep the largest file (a partial copy is shorter), then by location
    for r in sorted(recs, key=lambda r: (r.sop_uid, -r.nbytes, r.item)):
        best_copy.setdefault(r.sop_uid, r)
    unique = list(best_copy.values())
    if not _has_duplicate_positions(unique):
        return [unique]
    by_acq: dict[str, list[SliceRecord]] = defaultdict(list)
    for r in unique:
        by_acq[r.acquisition].append(r)
    if len(by_acq) > 1 and not any(_has_duplicate_positions(g) for g in by_acq.values()):
        return [by_acq[a] for a in sorted(by_acq)]
    return [unique]  # _sorted_stack reports the duplicates


def _normal(rec: SliceRecord) -> np.ndarray:
    row, col = np.array(rec.iop[:3]), np.array(rec.iop[3:])
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    if not (0.9 < np.linalg.norm(row) < 1.1 and 0.9 < np.linalg.norm(col) < 1.1) or norm < 0.9:
        raise IngestError(RejectReason.GEOMETRY, "ImageOrientationPatient is not two orthogonal unit vectors")
    return n / norm


def _positions(recs: list[SliceRecord]) -> np.ndarray:
    n = _normal(recs[0])
    return np.array([np.dot(r.ipp, n) for r in recs])


def _has_duplicate_positions(recs: list[SliceRecord]) -> bool:
    if len(recs) < 2:
        return False
    d = np.sort(_positions(recs))
    return bool(np.any(np.diff(d) < POSITION_TOL_MM))


def _sorted_stack(recs: list[SliceRecord]) -> Stack:
    first = recs[0]
    if first.pixel_spacing is None or min(first.pixel_spacing) <= 0:
        raise IngestError(RejectReason.GEOMETRY, "PixelSpacing missing or not positive")
    n = _normal(first)
    d = _positions(recs)
    order = np.argsort(d, kind="stable")
    recs = [recs[i] for i in order]
    d = d[order]
    base = dict(records=tuple(recs), kind="volume", positions=tuple(float(v) for v in d), normal=tuple(float(v) for v in n))
    if len(recs) == 1:
        step = first.slice_thickness if first.slice_thickness and first.slice_thickness > 0 else 1.0
        return Stack(step=float(step), **base)
    steps = np.diff(d)
    if np.any(steps < POSITION_TOL_MM):
        dup = int(np.sum(steps < POSITION_TOL_MM))
        raise IngestError(RejectReason.DUPLICATE_SLICES, f"{dup} of {len(recs)} slices repeat a position with different images")
    tilt = _tilt_degrees(recs, n)
    smallest, median = float(steps.min()), float(np.median(steps))
    tol = max(0.02 * smallest, 0.01)
    irregular, detail, step = None, "", median
    if np.all(np.abs(steps - median) <= tol):
        pass
    elif np.all(np.abs(steps / smallest - np.round(steps / smallest)) * smallest <= tol):
        missing = int(np.sum(np.round(steps / smallest) - 1))
        irregular, step = RejectReason.MISSING_SLICES, smallest
        detail = f"{missing} slice(s) missing from a {smallest:.3g} mm grid of {len(recs) + missing}"
        if missing >= len(recs):  # more gap than data: interpolation would invent the volume
            raise IngestError(irregular, f"{detail}: too sparse to resample")
    else:
        irregular, step = RejectReason.UNEVEN_SPACING, median
        detail = f"slice spacing varies {smallest:.3g}-{float(steps.max()):.3g} mm"
    if tilt > TILT_TOL_DEG and irregular is None:
        irregular, detail = RejectReason.GANTRY_TILT, f"stack sheared by {tilt:.2f} degrees (gantry tilt)"
    elif tilt > TILT_TOL_DEG:
        detail += f"; also sheared by {tilt:.2f} degrees"
    return Stack(step=step, irregularity=irregular, detail=detail, tilt_deg=tilt, **base)


def _tilt_degrees(recs: list[SliceRecord], n: np.ndarray) -> float:
    """Angle between the line through the slice origins and the slice normal."""
    delta = np.array(recs[-1].ipp) - np.array(recs[0].ipp)
    along = float(np.dot(delta, n))
    perp = float(np.linalg.norm(delta - along * n))
    if perp < 0.01 or abs(along) < POSITION_TOL_MM:
        return 0.0
    return math.degrees(math.atan2(perp, abs(along)))
