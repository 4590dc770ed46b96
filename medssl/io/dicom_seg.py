"""Read a DICOM Segmentation (SEG) into a label volume with its true world geometry.

A SEG (PS3.3 A.51, C.8.20) stores one 2D frame per (segment, plane): the frame's plane
position (``PlanePositionSequence.ImagePositionPatient``, LPS mm) and segment number sit
in its per-frame functional group; orientation and pixel spacing are usually shared.
Frames are placed on a regular grid along the slice normal ``n = row x column`` (position
``d = IPP . n``, step = ``SpacingBetweenSlices`` or the smallest gap between planes), so a
SEG that omits empty planes still lands on its source series' grid. Each voxel takes the
segment number whose frame covers it: BINARY frames as they are, FRACTIONAL frames at
half their maximum (as highdicom thresholds them), LABELMAP frames hold the number itself.
Overlapping segments keep the highest number and say so in ``corrections``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from medssl.errors import IngestError
from medssl.io.dicom_scan import read_dataset
from medssl.io.volume import Volume, lps_to_ras, to_ras_canonical
from medssl.types import RejectReason

SEG_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "segmentation",
    "1.2.840.10008.5.1.4.1.1.66.7": "label map segmentation",
}
POSITION_TOL_MM = 1e-2


@dataclass
class SegLabels:
    """``volume.array`` [X, Y, Z] uint16 (segment numbers, 0 = none) in RAS+ order, and names."""

    volume: Volume
    segments: dict[int, str]  # segment number -> SegmentLabel ("" when absent)
    corrections: list[str] = field(default_factory=list)


def is_seg(data: bytes) -> bool:
    """Whether DICOM bytes hold a Segmentation object (header only, nothing decoded)."""
    try:
        ds = read_dataset(data, stop_before_pixels=True)
    except IngestError:
        return False
    return str(ds.get("SOPClassUID", "")) in SEG_SOP_CLASSES


def read_seg(data: bytes, *, max_bytes: int) -> SegLabels:
    """The SEG in ``data`` as a canonical label volume; IngestError on anything unusable."""
    ds = read_dataset(data, stop_before_pixels=True)
    if str(ds.get("SOPClassUID", "")) not in SEG_SOP_CLASSES:
        raise IngestError(RejectReason.UNSUPPORTED, "DICOM file is not a Segmentation (SEG)")
    kind = str(ds.get("SegmentationType", "")).upper()
    if kind not in ("BINARY", "FRACTIONAL", "LABELMAP"):
        raise IngestError(RejectReason.UNSUPPORTED, f"SEG of type '{kind[:16]}'")
    rows, cols, n_frames = int(ds.get("Rows", 0)), int(ds.get("Columns", 0)), int(ds.get("NumberOfFrames", 1) or 1)
    if rows < 1 or cols < 1 or rows * cols * n_frames > max_bytes:
        raise IngestError(RejectReason.TOO_LARGE, f"SEG of {n_frames} frames of {rows}x{cols} exceeds the bound")
    segments = {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in ds.get("SegmentSequence", [])}
    frames = _frame_geometry(ds, n_frames, kind)
    ds = read_dataset(data, stop_before_pixels=False)
    try:
        pixels = np.asarray(ds.pixel_array).reshape(n_frames, rows, cols)
    except Exception as exc:  # noqa: BLE001 - decoders raise many types
        raise IngestError(RejectReason.DECODE, f"SEG pixel data does not decode ({type(exc).__name__})") from None
    if kind == "FRACTIONAL":
        pixels = pixels >= max(int(ds.get("MaximumFractionalValue", 255)), 1) / 2.0
    return _assemble(pixels, frames, kind, segments, (rows, cols))


@dataclass(frozen=True)
class _Frame:
    ipp: np.ndarray  # LPS mm
    segment: int  # 0 for LABELMAP (the pixel values are the numbers)


def _frame_geometry(ds: Dataset, n_frames: int, kind: str) -> tuple[np.ndarray, tuple[float, float], float | None, list[_Frame]]:
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])
    if len(per_frame) != n_frames:
        raise IngestError(RejectReason.GEOMETRY, f"SEG has {len(per_frame)} per-frame groups for {n_frames} frames")

    def item(group: Dataset, keyword: str):
        for source in (group, shared):
            seq = source.get(keyword)
            if seq:
                return seq[0]
        raise IngestError(RejectReason.GEOMETRY, f"SEG frame without {keyword}")

    first = per_frame[0]
    iop = np.array([float(v) for v in item(first, "PlaneOrientationSequence").ImageOrientationPatient])
    measures = item(first, "PixelMeasuresSequence")
    dy, dx = (float(v) for v in measures.PixelSpacing)
    spacing = measures.get("SpacingBetweenSlices")
    frames = []
    for group in per_frame:
        other = np.array([float(v) for v in item(group, "PlaneOrientationSequence").ImageOrientationPatient])
        if np.abs(other - iop).max() > 1e-4:
            raise IngestError(RejectReason.GEOMETRY, "SEG frames differ in orientation")
        ipp = np.array([float(v) for v in item(group, "PlanePositionSequence").ImagePositionPatient])
        segment = 0 if kind == "LABELMAP" else int(item(group, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        frames.append(_Frame(ipp, segment))
    if min(dx, dy) <= 0 or iop.shape != (6,):
        raise IngestError(RejectReason.GEOMETRY, "SEG PixelSpacing or ImageOrientationPatient invalid")
    return iop, (dx, dy), (float(spacing) if spacing else None), frames


def _assemble(pixels: np.ndarray, geometry, kind: str, segments: dict[int, str], size: tuple[int, int]) -> SegLabels:
    iop, (dx, dy), spacing, frames = geometry
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if not 0.99 < np.linalg.norm(normal) < 1.01:
        raise IngestError(RejectReason.GEOMETRY, "SEG ImageOrientationPatient is not two orthogonal unit vectors")
    d = np.array([float(f.ipp @ normal) for f in frames])
    planes = np.unique(np.round(d / POSITION_TOL_MM) * POSITION_TOL_MM)
    gaps = np.diff(planes)
    step = spacing or (float(gaps.min()) if gaps.size else 1.0)
    index = np.round((d - planes[0]) / step).astype(int)
    if np.abs(planes[0] + index * step - d).max() > max(POSITION_TOL_MM, 0.01 * step):
        raise IngestError(RejectReason.GEOMETRY, "SEG frames do not lie on a regular slice grid")
    origin = frames[int(np.argmin(d))].ipp
    for f in frames:  # every plane's origin on the line through the first along the normal
        off = f.ipp - origin
        if np.linalg.norm(off - (off @ normal) * normal) > max(POSITION_TOL_MM, 0.01 * min(dx, dy)):
            raise IngestError(RejectReason.GEOMETRY, "SEG frames are shifted in-plane (sheared stack)")
    n_slices = int(index.max()) + 1
    out = np.zeros((size[1], size[0], n_slices), dtype=np.uint16)  # [column, row, slice]
    overlap = 0
    for f, s, frame in zip(frames, index, pixels):
        values = frame.T.astype(np.uint16) if kind == "LABELMAP" else (frame.T != 0).astype(np.uint16) * np.uint16(f.segment)
        plane = out[:, :, s]
        overlap += int(np.count_nonzero((plane != 0) & (values != 0) & (plane != values)))
        np.maximum(plane, values, out=plane)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = row * dx, col * dy, normal * step, origin
    array, ras = to_ras_canonical(out, lps_to_ras(affine))
    corrections = [f"{overlap} voxels claimed by several segments: highest segment number kept"] if overlap else []
    return SegLabels(Volume(np.ascontiguousarray(array), ras), segments, corrections)
