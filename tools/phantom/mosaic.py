"""Siemens-style MR mosaic: all slices of a volume tiled into one 2D image.

What readers (dcm2niix, nibabel's ``MosaicWrapper``) use, and this writer sets:

- ``ImageType`` containing ``MOSAIC`` and ``Manufacturer`` ``SIEMENS``;
- ``NumberOfImagesInMosaic`` both in (0019,xx0A) of private block ``SIEMENS MR HEADER`` and
  in the CSA image header (0029,xx10) of block ``SIEMENS CSA HEADER``, with
  ``SliceNormalVector`` (slices are tiled in increasing position along it),
  ``AcquisitionMatrixText`` and ``MosaicRefAcqTimes``;
- a grid of ``ceil(sqrt(n))`` x ``ceil(sqrt(n))`` tiles, filled row by row, unused tiles zero;
- ``ImagePositionPatient`` in Siemens' mosaic convention: the position the first slice's
  top-left pixel would have if the whole mosaic were one slice centred on that slice, i.e.
  ``true_ipp - col_cosine * row_spacing * (M_rows - rows) / 2 - row_cosine * col_spacing *
  (M_cols - cols) / 2``. Readers undo this.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage

from tools.phantom.csa import encode_csa2
from tools.phantom.dicom_base import (
    derived_uid,
    ds_number,
    new_dataset,
    quantize,
    resolve_transfer_syntax,
    save,
    set_identity,
    set_pixels,
)
from tools.phantom.dicom_series import default_study_uid
from tools.phantom.geometry import make_slice_grid, sample_on_grid
from tools.phantom.volume import Phantom


def tile_mosaic(slices: np.ndarray) -> np.ndarray:
    """``[n, rows, cols]`` → ``[k * rows, k * cols]``, ``k = ceil(sqrt(n))``, row-major tiles."""
    n, rows, cols = slices.shape
    k = math.ceil(math.sqrt(n))
    mosaic = np.zeros((k * rows, k * cols), dtype=slices.dtype)
    for t in range(n):
        r, c = divmod(t, k)
        mosaic[r * rows : (r + 1) * rows, c * cols : (c + 1) * cols] = slices[t]
    return mosaic


def write_mosaic(
    phantom: Phantom,
    path: str | Path,
    *,
    patient_name: str = "PHANTOM^TORSO",
    patient_id: str = "PHANTOM0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    series_description: str = "ep2d_bold MOSAIC",
    orientation: str | Sequence[float] = "axial",
    transfer_syntax: str = ExplicitVRLittleEndian,
    repetition_time_ms: float = 2000.0,
    echo_time_ms: float = 30.0,
    seed: int = 0,
) -> Path:
    """Write an MR ``phantom`` as one Siemens mosaic MR Image Storage file at ``path``.

    Slice ``s`` of the stack (see ``make_slice_grid``) is tile ``s``; the geometry round-trips
    through dcm2niix and nibabel to the phantom's world grid. Returns ``path``.
    """
    if phantom.modality != "MR":
        raise ValueError(f"write_mosaic needs an MR phantom, got {phantom.modality}")
    ts = resolve_transfer_syntax(transfer_syntax)
    grid = make_slice_grid(phantom, orientation)
    values = sample_on_grid(phantom.image, phantom.affine, grid, order=1, cval=0.0)
    mosaic = tile_mosaic(quantize(values, slope=1.0, intercept=0.0, signed=False, bits_stored=12))
    n, rows, cols = values.shape
    mosaic_rows, mosaic_cols = mosaic.shape
    dr, dc = grid.pixel_spacing
    ipp = (
        grid.positions[0]
        - grid.col_cosine * dr * (mosaic_rows - rows) / 2.0
        - grid.row_cosine * dc * (mosaic_cols - cols) / 2.0
    )

    study_uid = UID(study_uid) if study_uid else default_study_uid(patient_id, phantom.seed)
    series_uid = (
        UID(series_uid) if series_uid else derived_uid(study_uid, "series", series_number, seed)
    )
    ds = new_dataset(MRImageStorage, derived_uid(series_uid, "mosaic", 1), ts)
    set_identity(
        ds,
        patient_name=patient_name,
        patient_id=patient_id,
        study_uid=study_uid,
        series_uid=series_uid,
        series_number=series_number,
        modality="MR",
        series_description=series_description,
        manufacturer="SIEMENS",
    )
    ds.ManufacturerModelName = "Phantom"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "NORM", "MOSAIC"]
    ds.InstanceNumber = 1
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = derived_uid(study_uid, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.ScanningSequence = "EP"
    ds.SequenceVariant = "SK"
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = "epfid2d1_64"
    ds.RepetitionTime = ds_number(repetition_time_ms)
    ds.EchoTime = ds_number(echo_time_ms)
    ds.MagneticFieldStrength = "3"
    ds.ImagingFrequency = "123.2"
    ds.FlipAngle = "90"
    ds.AcquisitionMatrix = [0, cols, rows, 0]
    ds.InPlanePhaseEncodingDirection = "COL"
    ds.ImagePositionPatient = [ds_number(v) for v in ipp]
    ds.ImageOrientationPatient = [ds_number(v) for v in grid.image_orientation]
    ds.PixelSpacing = [ds_number(v) for v in grid.pixel_spacing]
    ds.SliceThickness = ds_number(grid.slice_thickness)
    ds.SpacingBetweenSlices = ds_number(abs(grid.slice_spacing))
    ds.SliceLocation = ds_number(float(np.dot(grid.positions[0], grid.normal)))

    mr_header = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    mr_header.add_new(0x0A, "US", n)
    slice_times = [round(t * repetition_time_ms / n, 3) for t in range(n)]
    csa = encode_csa2(
        [
            ("NumberOfImagesInMosaic", "US", [n]),
            ("SliceNormalVector", "FD", [float(v) for v in grid.normal]),
            ("AcquisitionMatrixText", "SH", [f"{rows}p*{cols}"]),
            ("PhaseEncodingDirectionPositive", "IS", [1]),
            ("MosaicRefAcqTimes", "FD", slice_times),
            ("SliceMeasurementDuration", "DS", [round(repetition_time_ms / n, 3)]),
        ]
    )
    csa_block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    csa_block.add_new(0x10, "OB", csa + b"\x00" * (len(csa) % 2))
    set_pixels(ds, mosaic, bits_stored=12)
    return save(ds, Path(path))
