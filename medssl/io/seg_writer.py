"""DICOM SEG from a label map on the canonical RAS+ grid of a source series (highdicom).

The model predicts on the volume ``dicom_volume.read_stack`` builds: voxel axes in RAS+
order, world affine in RAS mm. A DICOM Segmentation, though, must be drawn on the source
images themselves (PS3.3 C.8.20), in DICOM patient space (LPS). So each source slice's
pixel centres are computed from its own ImagePositionPatient / ImageOrientationPatient /
PixelSpacing (PS3.3 C.7.6.2.1.1), turned into RAS (x and y negated), into voxel indices
of the label map (inverse affine), and the label is read at the nearest voxel. For a
regular stack those indices are exact integers: the SEG frames are the label map, voxel
for voxel, whatever the acquisition orientation (axial, coronal, oblique).

The SEG is a derived object for the hospital's own PACS: it carries the source's patient
and study identity on an explicit allow-list (medssl/io/pacs_attributes.py), with new
Series and SOP Instance UIDs; see docs/identifiers.md. Nothing here logs or prints an identifier.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from nibabel import orientations as ornt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from medssl.atomic import atomic_writer
from medssl.io.pacs_attributes import SEG_ATTRIBUTES, keep_allowed

__all__ = ["MEDSSL_MANUFACTURER", "SourceGrid", "source_grid", "write_dicom_seg"]

# highdicom logs the source datasets' UIDs at INFO while copying modules: identifiers
# must not reach logs (docs/identifiers.md), so its chatter stops at WARNING.
logging.getLogger("highdicom").setLevel(logging.WARNING)

MEDSSL_MANUFACTURER = "medssl"  # the router skips series this manufacturer wrote
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_ORIENTATION_TOL = 1e-3
_GenericCodes = tuple[hd.sr.CodedConcept, hd.sr.CodedConcept]


@dataclass(frozen=True)
class SourceGrid:
    """A single-frame source series sorted along its slice normal, and its RAS+ grid.

    datasets: the source images in stacking order (ascending ``IPP . normal``);
    affine: 4x4 voxel -> RAS mm of the canonical volume (what the readers produce);
    shape: ``(X, Y, Z)`` of that volume.
    """

    datasets: tuple[Dataset, ...]
    affine: np.ndarray
    shape: tuple[int, int, int]


def source_grid(source_datasets: Sequence[Dataset]) -> SourceGrid:
    """Sort the source images and compute the canonical RAS+ grid the readers build from them.

    Same construction as ``dicom_volume``: LPS affine with columns ``dx * row_cosine``,
    ``dy * column_cosine``, ``step * normal`` and the first slice's position, then RAS, then
    the voxel axes permuted/flipped to RAS+ order. Raises ValueError for anything that is
    not one stack of single-frame images sharing orientation and size.
    """
    if len(source_datasets) == 0:
        raise ValueError("source_datasets is empty: a SEG needs the source images")
    first = source_datasets[0]
    for index, ds in enumerate(source_datasets):
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows"):
            if keyword not in ds:
                raise ValueError(f"source dataset {index} has no {keyword}")
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise ValueError(f"source dataset {index} is multi-frame; only single-frame series")
        if ds.SeriesInstanceUID != first.SeriesInstanceUID:
            raise ValueError(f"source dataset {index} belongs to another series than dataset 0")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise ValueError(
                f"source dataset {index} is {ds.Rows}x{ds.Columns}, "
                f"dataset 0 is {first.Rows}x{first.Columns}"
            )
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        if (
            np.abs(iop - np.asarray(first.ImageOrientationPatient, dtype=float)).max()
            > _ORIENTATION_TOL
        ):
            raise ValueError(f"source dataset {index} has another ImageOrientationPatient")
    row, col = _cosines(first)
    normal = np.cross(row, col)
    ordered = sorted(source_datasets, key=lambda ds: float(np.dot(_position(ds), normal)))
    positions = np.array([np.dot(_position(ds), normal) for ds in ordered])
    steps = np.diff(positions)
    if len(steps) and steps.min() < 1e-3:
        raise ValueError("source_datasets hold two slices at one position (duplicates?)")
    step = float(steps.min()) if len(steps) else float(first.get("SliceThickness") or 1.0)
    n_slices = (
        round(float(positions[-1] - positions[0]) / step) + 1
    )  # missing slices keep their place
    dy, dx = (float(v) for v in first.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * dx, col * dy, normal * step
    lps[:3, 3] = _position(ordered[0])
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    acquired_shape = (int(first.Columns), int(first.Rows), n_slices)
    transform = ornt.ornt_transform(ornt.io_orientation(ras), ornt.axcodes2ornt(("R", "A", "S")))
    affine = ras @ ornt.inv_ornt_aff(transform, acquired_shape)
    shape = tuple(acquired_shape[int(axis)] for axis in np.argsort(transform[:, 0]))
    return SourceGrid(tuple(ordered), affine, shape)  # type: ignore[arg-type]


def slice_voxel_indices(ds: Dataset, affine: np.ndarray) -> np.ndarray:
    """``[rows, cols, 3]`` voxel indices (float) of one source image's pixel centres."""
    row, col = _cosines(ds)
    dy, dx = (float(v) for v in ds.PixelSpacing)
    r = np.arange(int(ds.Rows), dtype=np.float64)[:, None, None] * (dy * col)
    c = np.arange(int(ds.Columns), dtype=np.float64)[None, :, None] * (dx * row)
    lps = _position(ds) + r + c  # [rows, cols, 3]
    inverse = np.linalg.inv(affine)
    return (lps @ _LPS_TO_RAS.T) @ inverse[:3, :3].T + inverse[:3, 3]


def write_dicom_seg(
    label_map: np.ndarray,
    source_datasets: Sequence[Dataset],
    structure_names: Mapping[int, str],
    out_path: str | Path,
    *,
    algorithm_name: str,
    algorithm_version: str,
    affine: np.ndarray | None = None,
    property_codes: Mapping[str, _GenericCodes] | None = None,
    series_number: int = 901,
) -> Path:
    """Write a BINARY DICOM SEG of ``label_map`` drawn on the source images; returns the path.

    label_map: ``[X, Y, Z]`` integers, 0 = background, on the RAS+ grid of the volume built
    from ``source_datasets`` (any order); pass ``affine`` (voxel -> RAS mm) when the grid
    is not that one (e.g. the volume was resampled), else it is computed by
    :func:`source_grid` and the shape must match. structure_names: label value -> name
    (the SegmentLabel); one segment per value present in ``label_map``, numbered 1..n in
    ascending value order. property_codes: name -> (category, type) codes; default SCT
    "Tissue" / "Tissue". Frames without any structure are omitted.

    Raises ValueError naming the input: wrong shape or dtype, label values without a name,
    nothing segmented, sources that are not one single-frame stack.
    """
    label_map = np.asarray(label_map)
    if label_map.ndim != 3:
        raise ValueError(f"label_map must be [X, Y, Z], got shape {label_map.shape}")
    if not np.issubdtype(label_map.dtype, np.integer) and label_map.dtype != bool:
        raise ValueError(f"label_map must hold integers, got dtype {label_map.dtype}")
    grid = source_grid(source_datasets)
    if affine is None:
        if label_map.shape != grid.shape:
            raise ValueError(
                f"label_map shape {label_map.shape} differs from the source grid "
                f"{grid.shape}; pass affine= for another grid"
            )
        affine = grid.affine
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    present = [int(v) for v in np.unique(label_map) if v != 0]
    if present and present[0] < 0:
        raise ValueError(f"label_map holds negative values (min {present[0]}); labels are >= 0")
    unnamed = [v for v in present if v not in structure_names]
    if unnamed:
        raise ValueError(f"label_map values {unnamed} have no entry in structure_names")
    if not present:
        raise ValueError("label_map holds no structure (all zero): there is nothing to write")
    if len(present) > 65535:
        raise ValueError(f"label_map holds {len(present)} structures; at most 65535")
    frames = _frames_on_sources(label_map, grid.datasets, affine, present)
    segments = _segment_descriptions(
        present, structure_names, property_codes or {}, algorithm_name, algorithm_version
    )
    seg = hd.seg.Segmentation(
        source_images=list(grid.datasets),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MEDSSL_MANUFACTURER,
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number="none",
        series_description=f"{MEDSSL_MANUFACTURER} SEG {algorithm_name}"[:64],
        content_label="MEDSSL",
        content_description=f"{algorithm_name} {algorithm_version}"[:64],
        omit_empty_frames=True,
    )
    keep_allowed(seg, SEG_ATTRIBUTES)  # highdicom copies more than the PACS needs
    seg.PositionReferenceIndicator = ""  # type 2; the source's may be free text
    out_path = Path(out_path)
    with atomic_writer(out_path) as stream:
        seg.save_as(stream, enforce_file_format=True)
    return out_path


def _frames_on_sources(
    label_map: np.ndarray, datasets: Sequence[Dataset], affine: np.ndarray, present: list[int]
) -> np.ndarray:
    """``[n_sources, rows, cols]`` segment numbers (uint8/uint16), nearest voxel per pixel."""
    lookup = np.zeros(max(present) + 1, dtype=np.uint16)
    lookup[present] = np.arange(1, len(present) + 1)
    dtype = np.uint8 if len(present) < 256 else np.uint16
    first = datasets[0]
    frames = np.zeros((len(datasets), int(first.Rows), int(first.Columns)), dtype=dtype)
    shape = np.array(label_map.shape)
    for n, ds in enumerate(datasets):
        ijk = np.rint(slice_voxel_indices(ds, affine)).astype(np.int64)  # [rows, cols, 3]
        inside = np.all((ijk >= 0) & (ijk < shape), axis=-1)
        values = np.zeros(inside.shape, dtype=np.int64)
        i, j, k = ijk[inside].T
        values[inside] = label_map[i, j, k]
        frames[n] = lookup[values]
    return frames


def _segment_descriptions(
    present: list[int],
    names: Mapping[int, str],
    codes_by_name: Mapping[str, _GenericCodes],
    algorithm_name: str,
    algorithm_version: str,
) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=algorithm_version
    )
    generic = (codes.SCT.Tissue, codes.SCT.Tissue)
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=str(names[value])[:64],
            segmented_property_category=codes_by_name.get(names[value], generic)[0],
            segmented_property_type=codes_by_name.get(names[value], generic)[1],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, value in enumerate(present, start=1)
    ]


def _cosines(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    row, col = iop[:3], iop[3:]
    if not (0.9 < np.linalg.norm(row) < 1.1 and 0.9 < np.linalg.norm(col) < 1.1):
        raise ValueError(f"ImageOrientationPatient is not two unit vectors, got {iop.tolist()}")
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def _position(ds: Dataset) -> np.ndarray:
    return np.asarray(ds.ImagePositionPatient, dtype=np.float64)
