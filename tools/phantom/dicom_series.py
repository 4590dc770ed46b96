"""Single-frame DICOM series (one file per slice) of a phantom, with controllable geometry.

Each series is a stack described by :class:`tools.phantom.geometry.SliceGrid`; pixel values
are the phantom resampled at each pixel's true world position, so a correct reader
recovers the phantom's world geometry whatever the orientation, tilt, gaps or file order.
Traps for careless readers are on by default: random file names without extension and
``InstanceNumber`` shuffled against slice position (``shuffle=True``). Scanner habits are
opt-in (``ds_rounding``, ``pad_after_pixels``, ``long_private_value``: see
:mod:`tools.phantom.scanner_quirks`), and ``localizer=True`` writes the series' scout
instead (:mod:`tools.phantom.localizer`).
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
    default_study_uid,
    derived_uid,
    ds_number,
    new_dataset,
    quantize,
    resolve_transfer_syntax,
    set_identity,
    set_pixels,
)
from tools.phantom.geometry import SliceGrid, make_slice_grid, sample_on_grid
from tools.phantom.localizer import ct_scout_images, mr_three_plane_images, write_localizer
from tools.phantom.scanner_quirks import ScannerQuirks, set_plane
from tools.phantom.volume import Phantom

__all__ = ["default_study_uid", "set_plane", "write_ct_series", "write_mr_series", "write_stack"]


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
    quirks: ScannerQuirks | None = None,
) -> list[Path]:
    """Write ``frames [n_slices, rows, cols]`` (stored integers) as one file per slice.

    ``fill(ds)`` adds the modality-specific attributes; ``quirks`` the scanner habits to
    reproduce. Returns the paths in stacking order (a duplicate follows its original).
    """
    ts = resolve_transfer_syntax(transfer_syntax)
    quirks = quirks or ScannerQuirks()
    plan = _slice_plan(grid.n_slices, missing_slices, duplicate_slices)
    series_key = int(hashlib.sha256(str(series_uid).encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng([int(seed), series_key])
    instance_numbers = list(range(1, len(plan) + 1))
    if shuffle:
        instance_numbers = [int(v) for v in rng.permutation(instance_numbers)]
    names = _file_names(instance_numbers, file_names, rng)
    jitter = quirks.jitter(grid, rng)  # drawn last: the defaults keep their names and numbers
    paths = []
    for index, ((s, copy), number, name) in enumerate(zip(plan, instance_numbers, names)):
        ds = new_dataset(sop_class, derived_uid(series_uid, "slice", s, copy), ts)
        fill(ds)
        ds.InstanceNumber = number
        ds.AcquisitionNumber = 1
        quirks.set_plane(ds, grid, s, jitter)
        set_pixels(ds, np.ascontiguousarray(frames[s]), bits_stored=bits_stored)
        quirks.before_save(ds)
        apply_extra(ds, extra)  # last, so a test can deliberately override anything
        paths.append(quirks.save(ds, Path(out_dir) / name, index))
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
    ds_rounding: bool = False,
    pad_after_pixels: int = 0,
    long_private_value: bool = False,
    localizer: bool = False,
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
    ds_rounding: geometry rounded as scanners write it (cosines to 6 significant digits,
    slice origins jittered in-plane by < 0.1 mm, DS strings of at most 16 characters);
    pad_after_pixels: that many zero bytes after Pixel Data in every other file;
    long_private_value: a ``SIEMENS MR HEADER`` private SH value of 21 characters;
    localizer: write this series' CT scout instead (one coronal projection image,
    ImageType LOCALIZER, see :mod:`tools.phantom.localizer`); geometry arguments are ignored;
    extra: keyword → value set on every slice (after everything else);
    seed: drives file names, instance numbers and jitter (UIDs derive from ids and seed).

    Returns the written paths in stacking order.
    """
    _require(phantom, "CT", "write_ct_series")
    quirks = ScannerQuirks(ds_rounding, pad_after_pixels, long_private_value)
    study_uid = UID(study_uid) if study_uid else default_study_uid(patient_id, phantom.seed)
    series_uid = (
        UID(series_uid) if series_uid else derived_uid(study_uid, "series", series_number, seed)
    )
    description = series_description or (
        "SCOUT" if localizer else f"CT {orientation if isinstance(orientation, str) else 'oblique'}"
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
        ds.GantryDetectorTilt = ds_number(float(gantry_tilt_deg))
        ds.RescaleIntercept = ds_number(rescale_intercept)
        ds.RescaleSlope = ds_number(rescale_slope)
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"

    if localizer:
        return write_localizer(
            out_dir,
            ct_scout_images(phantom),
            fill,
            sop_class=CTImageStorage,
            series_uid=series_uid,
            transfer_syntax=resolve_transfer_syntax(transfer_syntax),
            quirks=quirks,
            seed=seed,
        )
    grid = make_slice_grid(phantom, orientation, gantry_tilt_deg=gantry_tilt_deg)
    hu = sample_on_grid(phantom.image, phantom.affine, grid, order=1, cval=-1000.0)
    stored = quantize(
        hu, slope=rescale_slope, intercept=rescale_intercept, signed=signed, bits_stored=16
    )
    bits_stored = 16 if signed or int(stored.max()) > 4095 else 12
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
        quirks=quirks,
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
    ds_rounding: bool = False,
    pad_after_pixels: int = 0,
    long_private_value: bool = False,
    localizer: bool = False,
    extra: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write an MR phantom as an MR Image Storage series (T1-weighted spin echo tags).

    Pixels are the phantom rounded to uint16 (BitsStored 12, no rescale). Geometry and
    the other arguments behave as in :func:`write_ct_series`, except ``localizer``: a
    three-plane localizer (one axial, one sagittal, one coronal image through the centre).
    """
    _require(phantom, "MR", "write_mr_series")
    quirks = ScannerQuirks(ds_rounding, pad_after_pixels, long_private_value)
    study_uid = UID(study_uid) if study_uid else default_study_uid(patient_id, phantom.seed)
    series_uid = (
        UID(series_uid) if series_uid else derived_uid(study_uid, "series", series_number, seed)
    )
    description = series_description or ("LOCALIZER" if localizer else "T1 SE")

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

    if localizer:
        return write_localizer(
            out_dir,
            mr_three_plane_images(phantom),
            fill,
            sop_class=MRImageStorage,
            series_uid=series_uid,
            transfer_syntax=resolve_transfer_syntax(transfer_syntax),
            quirks=quirks,
            seed=seed,
        )
    grid = make_slice_grid(phantom, orientation)
    values = sample_on_grid(phantom.image, phantom.affine, grid, order=1, cval=0.0)
    stored = quantize(values, slope=1.0, intercept=0.0, signed=False, bits_stored=12)
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
        quirks=quirks,
    )
