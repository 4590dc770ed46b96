"""Single-frame DICOM series (one file per slice) of a phantom, with controllable geometry.

Each series is a stack described by :class:`tools.phantom.geometry.SliceGrid`; pixel values
are the phantom resampled at each pixel's true world position, so a correct reader
recovers the phantom's world geometry whatever the orientation, tilt, gaps or file order.
Traps for careless readers are on by default: random file names without extension and
``InstanceNumber`` shuffled against slice position (``shuffle=True``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from tools.phantom.dicom_base import (
    apply_extra,
    derived_uid,
    ds_number,
    new_dataset,
    quantize,
    resolve_transfer_syntax,
    save,
    set_identity,
    set_pixels,
)
from tools.phantom.geometry import SliceGrid, make_slice_grid, sample_on_grid
from tools.phantom.volume import Phantom


def default_study_uid(patient_id: str, seed: int) -> UID:
    """The StudyInstanceUID writers use when none is given."""
    return derived_uid("study", patient_id, seed)


def set_plane(ds: Dataset, grid: SliceGrid, s: int) -> None:
    """Image Plane module of slice ``s`` of ``grid``."""
    ds.ImagePositionPatient = [ds_number(v) for v in grid.positions[s]]
    ds.ImageOrientationPatient = [ds_number(v) for v in grid.image_orientation]
    ds.PixelSpacing = [ds_number(v) for v in grid.pixel_spacing]
    ds.SliceThickness = ds_number(grid.slice_thickness)
    ds.SpacingBetweenSlices = ds_number(abs(grid.slice_spacing))
    ds.SliceLocation = ds_number(float(np.dot(grid.positions[s], grid.normal)))


def _slice_plan(
    n_slices: int, missing: Iterable[int], duplicates: Iterable[int]
) -> list[tuple[int, int]]:
    """(slice index, copy number) of every file to write, in stacking order."""
    missing, duplicates = set(missing), list(duplicates)
    for name, indices in (("missing_slices", missing), ("duplicate_slices", duplicates)):
        bad = [s for s in indices if not 0 <= s < n_slices]
        if bad:
            raise ValueError(f"{name} {sorted(bad)} outside 0..{n_slices - 1}")
    plan = [(s, 0) for s in range(n_slices) if s not in missing]
    plan += [(s, 1 + duplicates[:n].count(s)) for n, s in enumerate(duplicates) if s not in missing]
    return sorted(plan)


def _file_names(instance_numbers: Sequence[int], style: str, rng: np.random.Generator) -> list[str]:
    if style == "instance":
        return [f"IM{n:05d}.dcm" for n in instance_numbers]
    if style == "random":
        return [f"{int(v):016x}" for v in rng.integers(0, 2**63, size=len(instance_numbers))]
    raise ValueError(f"file_names must be 'random' or 'instance', got {style!r}")


def write_stack(
    out_dir: str | Path,
    grid: SliceGrid,
    frames: np.ndarray,
    fill: Callable[[Dataset], None],
    *,
    sop_class: UID,
    series_uid: UID,
    transfer_syntax: str,
    bits_stored: int,
    missing_slices: Iterable[int],
    duplicate_slices: Iterable[int],
    file_names: str,
    shuffle: bool,
    extra: Mapping[str, Any] | None,
    seed: int,
) -> list[Path]:
    """Write ``frames [n_slices, rows, cols]`` (stored integers) as one file per slice.

    ``fill(ds)`` adds the modality-specific attributes. Returns the paths in stacking
    order (a duplicate follows its original).
    """
    ts = resolve_transfer_syntax(transfer_syntax)
    plan = _slice_plan(grid.n_slices, missing_slices, duplicate_slices)
    series_key = int(hashlib.sha256(str(series_uid).encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng([int(seed), series_key])
    instance_numbers = list(range(1, len(plan) + 1))
    if shuffle:
        instance_numbers = [int(v) for v in rng.permutation(instance_numbers)]
    names = _file_names(instance_numbers, file_names, rng)
    paths = []
    for (s, copy), number, name in zip(plan, instance_numbers, names):
        ds = new_dataset(sop_class, derived_uid(series_uid, "slice", s, copy), ts)
        fill(ds)
        ds.InstanceNumber = number
        ds.AcquisitionNumber = 1
        set_plane(ds, grid, s)
        set_pixels(ds, np.ascontiguousarray(frames[s]), bits_stored=bits_stored)
        apply_extra(ds, extra)  # last, so a test can deliberately override anything
        paths.append(save(ds, Path(out_dir) / name))
    return paths


def _require(phantom: Phantom, modality: str, writer: str) -> None:
    if phantom.modality != modality:
        raise ValueError(f"{writer} needs a {modality} phantom, got {phantom.modality}")


def write_ct_series(
    phantom: Phantom,
    out_dir: str | Path,
    *,
    patient_name: str = "PHANTOM^TORSO",
    patient_id: str = "PHANTOM0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    series_description: str | None = None,
    orientation: str | Sequence[float] = "axial",
    gantry_tilt_deg: float = 0.0,
    missing_slices: Iterable[int] = (),
    duplicate_slices: Iterable[int] = (),
    transfer_syntax: str = ExplicitVRLittleEndian,
    file_names: str = "random",
    shuffle: bool = True,
    modality: str = "CT",
    signed: bool = False,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    extra: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write a CT phantom as a CT Image Storage series, one file per slice, into ``out_dir``.

    orientation: ``"axial" | "coronal" | "sagittal"`` or a 6-vector ImageOrientationPatient
    (LPS; oblique grids are resampled with linear interpolation, air outside the volume);
    gantry_tilt_deg: sheared, tilted stack (axial only), written to GantryDetectorTilt;
    missing_slices / duplicate_slices: stack indices (0 = most inferior/first along the
    normal) to leave out / write twice (same position and pixels, new SOPInstanceUID);
    transfer_syntax: UID or keyword, one of ``dicom_base.SUPPORTED_SYNTAXES``;
    file_names: ``"random"`` (16 hex digits, no extension) or ``"instance"`` (``IM00001.dcm``);
    shuffle: InstanceNumber is a random permutation, unrelated to position;
    signed, rescale_slope, rescale_intercept: storage as int16 (BitsStored 16) or uint16
    (BitsStored 12 when it fits); ``HU = stored * slope + intercept`` within slope / 2;
    extra: keyword → value set on every slice (after everything else);
    seed: drives file names and instance numbers (UIDs derive from ids and seed).

    Returns the written paths in stacking order.
    """
    _require(phantom, "CT", "write_ct_series")
    grid = make_slice_grid(phantom, orientation, gantry_tilt_deg=gantry_tilt_deg)
    hu = sample_on_grid(phantom.image, phantom.affine, grid, order=1, cval=-1000.0)
    stored = quantize(
        hu, slope=rescale_slope, intercept=rescale_intercept, signed=signed, bits_stored=16
    )
    bits_stored = 16 if signed or int(stored.max()) > 4095 else 12
    study_uid = UID(study_uid) if study_uid else default_study_uid(patient_id, phantom.seed)
    series_uid = (
        UID(series_uid) if series_uid else derived_uid(study_uid, "series", series_number, seed)
    )
    description = (
        series_description or f"CT {orientation if isinstance(orientation, str) else 'oblique'}"
    )

    def fill(ds: Dataset) -> None:
        set_identity(
            ds,
            patient_name=patient_name,
            patient_id=patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            series_number=series_number,
            modality=modality,
            series_description=description,
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = derived_uid(study_uid, "frame-of-reference")
        ds.PositionReferenceIndicator = ""
        ds.KVP = "120"
        ds.ConvolutionKernel = "STANDARD"
        ds.GantryDetectorTilt = ds_number(grid.gantry_tilt_deg)
        ds.RescaleIntercept = ds_number(rescale_intercept)
        ds.RescaleSlope = ds_number(rescale_slope)
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"

    return write_stack(
        out_dir,
        grid,
        stored,
        fill,
        sop_class=CTImageStorage,
        series_uid=series_uid,
        transfer_syntax=transfer_syntax,
        bits_stored=bits_stored,
        missing_slices=missing_slices,
        duplicate_slices=duplicate_slices,
        file_names=file_names,
        shuffle=shuffle,
        extra=extra,
        seed=seed,
    )


def write_mr_series(
    phantom: Phantom,
    out_dir: str | Path,
    *,
    patient_name: str = "PHANTOM^TORSO",
    patient_id: str = "PHANTOM0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    series_description: str | None = None,
    orientation: str | Sequence[float] = "axial",
    missing_slices: Iterable[int] = (),
    duplicate_slices: Iterable[int] = (),
    transfer_syntax: str = ExplicitVRLittleEndian,
    file_names: str = "random",
    shuffle: bool = True,
    echo_time_ms: float = 10.0,
    repetition_time_ms: float = 500.0,
    magnetic_field_strength_t: float = 1.5,
    extra: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write an MR phantom as an MR Image Storage series (T1-weighted spin echo tags).

    Pixels are the phantom rounded to uint16 (BitsStored 12, no rescale). Geometry and
    the other arguments behave as in :func:`write_ct_series`.
    """
    _require(phantom, "MR", "write_mr_series")
    grid = make_slice_grid(phantom, orientation)
    values = sample_on_grid(phantom.image, phantom.affine, grid, order=1, cval=0.0)
    stored = quantize(values, slope=1.0, intercept=0.0, signed=False, bits_stored=12)
    study_uid = UID(study_uid) if study_uid else default_study_uid(patient_id, phantom.seed)
    series_uid = (
        UID(series_uid) if series_uid else derived_uid(study_uid, "series", series_number, seed)
    )
    description = series_description or "T1 SE"

    def fill(ds: Dataset) -> None:
        set_identity(
            ds,
            patient_name=patient_name,
            patient_id=patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            series_number=series_number,
            modality="MR",
            series_description=description,
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.FrameOfReferenceUID = derived_uid(study_uid, "frame-of-reference")
        ds.PositionReferenceIndicator = ""
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = ds_number(echo_time_ms)
        ds.RepetitionTime = ds_number(repetition_time_ms)
        ds.EchoTrainLength = 1
        ds.FlipAngle = "90"
        ds.MagneticFieldStrength = ds_number(magnetic_field_strength_t)
        ds.ImagingFrequency = ds_number(42.577478 * magnetic_field_strength_t)
        ds.ImagedNucleus = "1H"

    return write_stack(
        out_dir,
        grid,
        stored,
        fill,
        sop_class=MRImageStorage,
        series_uid=series_uid,
        transfer_syntax=transfer_syntax,
        bits_stored=12,
        missing_slices=missing_slices,
        duplicate_slices=duplicate_slices,
        file_names=file_names,
        shuffle=shuffle,
        extra=extra,
        seed=seed,
    )
