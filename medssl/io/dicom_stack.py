"""Group slice records into consistent stacks and check their geometry.

Group by SeriesInstanceUID, then split what must never share a volume (orientation within
DS rounding, image size, echo, image component, stack id, localizers: ``SplitKey``), as
dcm2niix does. Sort along the slice normal ``n = row_cosine x column_cosine`` by
``d = IPP . n``: never by file name or InstanceNumber. When every position holds the same
number of images, they are repeated acquisitions (fMRI, diffusion, ASL): one 4D stack whose
frames are ordered by acquisition at each position.

Tolerances follow DICOM's precision. Positions and cosines are decimal strings of at most
16 characters, so slice origins carry rounding noise: the slice step is the least-squares
slope of all positions; spacing is irregular only when an origin lies more than
``UNEVEN_TOL_MM`` (plus the written values' rounding bound) off that grid; a shear is the
in-plane drift of the origins, noise below ``SHEAR_NOISE_MM``, and gantry tilt only where a
gantry can tilt (CT, PET, NM, X-ray) or GantryDetectorTilt says so (``SHEARED`` otherwise).
What happens to an irregular stack is the caller's policy (reject, or resample in
``dicom_volume``).
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from medssl.errors import IngestError
from medssl.io.dicom_frames import FrameParams
from medssl.io.dicom_scan import SliceRecord
from medssl.types import RejectReason

POSITION_TOL_MM = 0.01  # two slices closer than this along the normal share a position
ORIENTATION_TOL = 1e-3  # cosines closer than this (max abs) are one orientation (DS rounding is ~1e-6)
UNEVEN_TOL_MM = 0.05  # a slice origin this far from the least-squares grid (plus rounding) is irregular
SHEAR_NOISE_MM = 0.1  # in-plane drift of slice origins below this (plus rounding) is noise, not shear
TILT_MODALITIES = frozenset({"CT", "PT", "NM", "XA", "RF", "DX", "CR"})  # a gantry or C-arm that can tilt


@dataclass(frozen=True)
class Stack:
    """Records of one future volume: slices sorted along the normal, frames in acquisition order.

    ``kind``: "volume" (a 3D or 4D stack of 2D images), "mosaic" (Siemens mosaics, one per
    frame), "image2d" (a projection image or one without patient geometry; the frames of a
    multi-frame one, e.g. an ultrasound cine, stay one stack). ``records`` is
    frame-major: slice ``z`` of frame ``t`` is ``records[t * n_slices + z]``.
    """

    records: tuple[SliceRecord, ...]
    kind: str
    positions: tuple[float, ...] = ()  # d = IPP . n for each slice position, ascending
    normal: tuple[float, float, float] | None = None
    step: float = 0.0  # slice spacing in mm (least squares; the grid step when slices are missing)
    irregularity: RejectReason | None = None  # MISSING_SLICES, UNEVEN_SPACING, GANTRY_TILT, SHEARED
    detail: str = ""
    tilt_deg: float = 0.0
    frames: int = 1
    frame_params: tuple[FrameParams, ...] = ()

    @property
    def first(self) -> SliceRecord:
        return self.records[0]

    @property
    def n_slices(self) -> int:
        return len(self.records) // self.frames

    def frame(self, t: int) -> tuple[SliceRecord, ...]:
        return self.records[t * self.n_slices : (t + 1) * self.n_slices]

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
        mosaics: dict[tuple, list[SliceRecord]] = defaultdict(list)
        images: dict[str, list[SliceRecord]] = defaultdict(list)  # 2D images; a cine's frames stay together
        orientations: list[tuple[float, ...]] = []
        for rec in by_series[series_uid]:
            if rec.mosaic_tiles and not rec.projection:
                where = tuple(round(v, 2) for v in rec.ipp) if rec.ipp else None
                mosaics[(_orientation(rec, orientations), where, rec.rows, rec.cols, rec.mosaic_tiles, rec.split_key)].append(rec)
            elif rec.projection or rec.ipp is None or rec.iop is None:
                images[rec.sop_uid.split("#")[0] if rec.frame is not None else rec.sop_uid].append(rec)
            else:
                groups[(_orientation(rec, orientations), rec.rows, rec.cols, rec.split_key, rec.samples_per_pixel)].append(rec)
        for key in sorted(images):
            frames = tuple(sorted(images[key], key=lambda r: r.frame or 0))
            stacks.append(Stack(frames, "image2d", frames=len(frames), frame_params=_frame_params([[r] for r in frames])))
        for key in sorted(mosaics, key=repr):
            unique = _unique(mosaics[key])
            ordered = tuple(sorted(unique, key=lambda r: (r.info.frame_order, r.sop_uid)))
            stacks.append(Stack(ordered, "mosaic", frames=len(ordered), frame_params=_frame_params([[r] for r in ordered])))
        for key in sorted(groups, key=repr):
            for part in _split_repeats(groups[key]):
                try:
                    stacks.append(_sorted_stack(part))
                except IngestError as err:
                    failed.append((part, err))
    return stacks, failed


def _orientation(rec: SliceRecord, seen: list[tuple[float, ...]]) -> int:
    """Index of the orientation ``rec`` shares with earlier records (within DS rounding)."""
    if rec.iop is None:
        return -1
    for index, iop in enumerate(seen):
        if max(abs(a - b) for a, b in zip(iop, rec.iop)) <= ORIENTATION_TOL:
            return index
    seen.append(rec.iop)
    return len(seen) - 1


def _unique(recs: list[SliceRecord]) -> list[SliceRecord]:
    """One record per SOP instance (and frame): of several copies, the largest file is whole."""
    best_copy: dict[str, SliceRecord] = {}
    for r in sorted(recs, key=lambda r: (r.sop_uid, -r.nbytes, r.item)):
        best_copy.setdefault(r.sop_uid, r)
    return list(best_copy.values())


def _split_repeats(recs: list[SliceRecord]) -> list[list[SliceRecord]]:
    """One 3D stack, one 4D stack of repeated acquisitions, or volumes split by acquisition."""
    unique = _unique(recs)
    counts = _position_counts(unique)
    if len(set(counts)) <= 1:
        return [unique]  # every position once (3D) or equally often (4D)
    by_acq: dict[str, list[SliceRecord]] = defaultdict(list)
    for r in unique:
        by_acq[r.acquisition].append(r)
    if len(by_acq) > 1 and all(len(set(_position_counts(g))) == 1 for g in by_acq.values()):
        return [by_acq[a] for a in sorted(by_acq)]  # e.g. two CT ranges of one series
    return [unique]  # _sorted_stack reports the duplicates


def _normal(rec: SliceRecord) -> np.ndarray:
    row, col = np.array(rec.iop[:3]), np.array(rec.iop[3:])
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    if not (0.9 < np.linalg.norm(row) < 1.1 and 0.9 < np.linalg.norm(col) < 1.1) or norm < 0.9:
        raise IngestError(RejectReason.GEOMETRY, "ImageOrientationPatient (0020,0037) is not two orthogonal unit vectors")
    return n / norm


def _cluster(d: np.ndarray) -> list[np.ndarray]:
    """Indices of ``d`` grouped by position (values within POSITION_TOL_MM), ascending."""
    order = np.argsort(d, kind="stable")
    breaks = np.nonzero(np.diff(d[order]) >= POSITION_TOL_MM)[0] + 1
    return np.split(order, breaks)


def _position_counts(recs: list[SliceRecord]) -> list[int]:
    if len(recs) < 2:
        return [len(recs)]
    n = _normal(recs[0])
    d = np.array([np.dot(r.ipp, n) for r in recs])
    return [len(c) for c in _cluster(d)]


def _frame_params(frames: list[list[SliceRecord]]) -> tuple[FrameParams, ...]:
    """Per-frame b-value, b-vector and time (relative to the first frame); () for a 3D volume.

    Times come from the acquisition times; where those do not tell the frames apart (GE
    writes one per series), from RepetitionTime, the volume interval of fMRI and diffusion.
    """
    if len(frames) < 2:
        return ()
    times = [min((r.info.seconds for r in f if r.info.seconds is not None), default=None) for f in frames]
    tr = frames[0][0].info.repetition_ms
    if (None in times or len(set(times)) < len(times)) and tr:  # times do not tell frames apart: one TR each
        times = [t * tr / 1000.0 for t in range(len(frames))]
    t0 = min((t for t in times if t is not None), default=None)
    out = []
    for recs, t in zip(frames, times):
        info = recs[0].info
        out.append(FrameParams(
            b_value=info.b_value,
            b_vector=info.b_vector,
            time_s=None if t is None or t0 is None else round(t - t0, 4),
            temporal_position=info.temporal_position,
        ))
    return tuple(out)


def _sorted_stack(recs: list[SliceRecord]) -> Stack:
    first = recs[0]
    if first.pixel_spacing is None or min(first.pixel_spacing) <= 0:
        raise IngestError(RejectReason.GEOMETRY, "PixelSpacing (0028,0030) missing or not positive")
    n = _normal(first)
    d = np.array([np.dot(r.ipp, n) for r in recs])
    clusters = _cluster(d)
    counts = {len(c) for c in clusters}
    if len(counts) > 1:
        repeated = sum(len(c) > 1 for c in clusters)
        raise IngestError(RejectReason.DUPLICATE_SLICES, f"{repeated} of {len(clusters)} slice positions hold {max(counts)} images and others fewer: repeated slices with different images, not a complete 4D series")
    frames = counts.pop()
    at_position = [sorted((recs[i] for i in c), key=lambda r: (r.info.frame_order, r.sop_uid)) for c in clusters]
    by_frame = [[pos[t] for pos in at_position] for t in range(frames)]
    ordered = tuple(r for frame in by_frame for r in frame)
    positions = np.array([np.dot(r.ipp, n) for r in by_frame[0]])
    base = dict(records=ordered, kind="volume", positions=tuple(float(v) for v in positions), normal=tuple(float(v) for v in n), frames=frames, frame_params=_frame_params(by_frame))
    if len(positions) == 1:
        step = first.spacing_between or first.slice_thickness
        return Stack(step=float(step) if step and step > 0 else 1.0, **base)
    precision = max(r.position_precision for r in by_frame[0])
    irregular, detail, step = _spacing(positions, precision)
    tilt, shift = _shear(by_frame[0], n, positions)
    if shift > SHEAR_NOISE_MM + 2 * precision:
        tilted = first.modality in TILT_MODALITIES or abs(first.gantry_tilt) > 0
        code = RejectReason.GANTRY_TILT if tilted else RejectReason.SHEARED
        what = f"stack sheared by {tilt:.2f} degrees ({shift:.2f} mm in-plane drift of the slice origins{'' if tilted else ', no gantry tilt'})"
        if irregular is None:
            irregular, detail = code, what
        else:
            detail += f"; also {what}"
    else:
        tilt = 0.0  # DS rounding, not a shear
    return Stack(step=step, irregularity=irregular, detail=detail, tilt_deg=tilt, **base)


def _spacing(d: np.ndarray, precision: float) -> tuple[RejectReason | None, str, float]:
    """Regular (least-squares step), missing slices on a grid, or uneven; tolerance in mm."""
    tol = UNEVEN_TOL_MM + 2 * precision
    k = np.arange(len(d))
    step, offset = np.polyfit(k, d, 1)
    if np.abs(d - (offset + step * k)).max() <= tol:
        return None, "", float(step)
    steps = np.diff(d)
    smallest = float(steps.min())
    index = np.round((d - d[0]) / smallest)
    grid, offset = np.polyfit(index, d, 1)
    if np.abs(d - (offset + grid * index)).max() <= tol:
        missing = int(index[-1] + 1 - len(d))
        detail = f"{missing} slice(s) missing from a {grid:.3g} mm grid of {len(d) + missing}"
        if missing >= len(d):  # more gap than data: interpolation would invent the volume
            raise IngestError(RejectReason.MISSING_SLICES, f"{detail}: too sparse to resample")
        return RejectReason.MISSING_SLICES, detail, float(grid)
    return RejectReason.UNEVEN_SPACING, f"slice spacing varies {smallest:.3g}-{float(steps.max()):.3g} mm", float(np.median(steps))


def _shear(recs: list[SliceRecord], n: np.ndarray, d: np.ndarray) -> tuple[float, float]:
    """(angle in degrees, largest in-plane drift in mm) of the slice origins off the normal line."""
    ipp = np.array([r.ipp for r in recs])
    delta = ipp - ipp[0]
    along = delta @ n
    perp = delta - np.outer(along, n)
    shift = float(np.linalg.norm(perp, axis=1).max())
    if abs(along[-1]) < POSITION_TOL_MM:
        return 0.0, shift
    slope = np.linalg.lstsq(along[:, None], perp, rcond=None)[0][0]  # in-plane mm per mm along the normal
    return math.degrees(math.atan(float(np.linalg.norm(slope)))), shift
