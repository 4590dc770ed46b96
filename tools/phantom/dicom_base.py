"""Pieces every phantom DICOM writer shares: UIDs, transfer syntaxes, identity modules, pixels.

UIDs are derived from their inputs (``pydicom.uid.generate_uid(entropy_srcs=...)``), so
the same call with the same seed writes byte-identical files. Dates and times are fixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import datadict
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from tools.phantom.jpeg_lossless import encode_jpeg_lossless_sv1

UNCOMPRESSED_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
COMPRESSED_SYNTAXES: tuple[UID, ...] = (
    RLELossless,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLosslessSV1,
)
SUPPORTED_SYNTAXES: tuple[UID, ...] = UNCOMPRESSED_SYNTAXES + COMPRESSED_SYNTAXES
_BY_KEYWORD = {uid.keyword: uid for uid in SUPPORTED_SYNTAXES}

IMPLEMENTATION_UID = UID("1.2.826.0.1.3680043.8.498.1")  # under pydicom's root, like its UIDs
STUDY_DATE, STUDY_TIME = "20240115", "093000"


def resolve_transfer_syntax(ts: str) -> UID:
    """A supported transfer syntax from its UID or keyword (e.g. ``"JPEGLSLossless"``)."""
    uid = _BY_KEYWORD.get(str(ts)) or next((u for u in SUPPORTED_SYNTAXES if u == str(ts)), None)
    if uid is None:
        names = ", ".join(u.keyword for u in SUPPORTED_SYNTAXES)
        raise ValueError(f"transfer syntax {ts!r} is not supported; use one of {names}")
    return uid


def derived_uid(*parts: object) -> UID:
    """A valid UID determined by ``parts`` (same parts → same UID)."""
    return generate_uid(entropy_srcs=["medssl-phantom", *(str(p) for p in parts)])


def default_study_uid(patient_id: str, seed: int) -> UID:
    """The StudyInstanceUID writers use when none is given."""
    return derived_uid("study", patient_id, seed)


def new_dataset(sop_class: UID, sop_instance: UID, transfer_syntax: UID) -> Dataset:
    """An empty dataset with its file meta information filled in."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDSSL_PHANTOM"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    return ds


def set_identity(
    ds: Dataset,
    *,
    patient_name: str,
    patient_id: str,
    study_uid: UID,
    series_uid: UID,
    series_number: int,
    modality: str,
    series_description: str,
    manufacturer: str = "medssl-phantom",
) -> None:
    """Patient, study, series and equipment attributes (fixed dates: files stay reproducible)."""
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = STUDY_DATE
    ds.StudyTime = STUDY_TIME
    ds.StudyID = "1"
    ds.AccessionNumber = str(patient_id)[-8:] + "A"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "PHANTOM TORSO"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(series_number)
    ds.SeriesDate = STUDY_DATE
    ds.SeriesTime = STUDY_TIME
    ds.SeriesDescription = series_description
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = "medssl synthetic"
    ds.ContentDate = STUDY_DATE
    ds.ContentTime = STUDY_TIME
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "CHEST"


def apply_extra(ds: Dataset, extra: Mapping[str, Any] | None) -> None:
    """Set each ``keyword: value`` of ``extra`` on ``ds``; unknown keywords raise ValueError."""
    for keyword, value in (extra or {}).items():
        if datadict.tag_for_keyword(keyword) is None:
            raise ValueError(f"extra: {keyword!r} is not a DICOM keyword")
        setattr(ds, keyword, value)


def ds_number(value: float) -> str:
    """A DS string (<= 16 chars) for ``value``, exact to 10 decimals when it fits.

    Geometry is rounded (IOP to 8, positions to 6 decimals) before sampling, so what is
    written is exactly what the pixels were sampled with.
    """
    text = f"{round(float(value), 10):.10f}".rstrip("0").rstrip(".")
    text = "0" if text in ("-0", "") else text
    if len(text) > 16:
        text = format_number_as_ds(float(value))
    return text


def quantize(
    values: np.ndarray, *, slope: float, intercept: float, signed: bool, bits_stored: int
) -> np.ndarray:
    """Stored integers for real ``values``: ``round((values - intercept) / slope)``.

    Returns int16 when ``signed`` else uint16. Values outside what ``bits_stored`` holds
    raise ValueError rather than wrap.
    """
    stored = np.rint((values.astype(np.float64) - intercept) / slope)
    lo, hi = (
        (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1)
        if signed
        else (0, (1 << bits_stored) - 1)
    )
    if stored.size and (stored.min() < lo or stored.max() > hi):
        raise ValueError(
            f"stored values {stored.min():.0f}..{stored.max():.0f} do not fit {bits_stored} "
            f"{'signed' if signed else 'unsigned'} bits (slope {slope}, intercept {intercept})"
        )
    return stored.astype(np.int16 if signed else np.uint16)


def set_pixels(ds: Dataset, frames: np.ndarray, *, bits_stored: int) -> None:
    """Set the Image Pixel module and (encoded) Pixel Data for the file's transfer syntax.

    frames: ``[rows, cols]`` or ``[n_frames, rows, cols]`` uint16/int16.
    """
    if frames.dtype not in (np.uint16, np.int16) or frames.ndim not in (2, 3):
        raise ValueError(
            "frames must be [rows, cols] or [n, rows, cols] uint16/int16, "
            f"got {frames.dtype} {frames.shape}"
        )
    signed = frames.dtype == np.int16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in frames.shape[-2:])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames.ndim == 3:
        ds.NumberOfFrames = int(frames.shape[0])
    ts = ds.file_meta.TransferSyntaxUID
    if ts in UNCOMPRESSED_SYNTAXES:
        order = ">" if ts == ExplicitVRBigEndian else "<"
        ds.PixelData = frames.astype(frames.dtype.newbyteorder(order)).tobytes()
        ds["PixelData"].VR = "OW"
    elif ts == JPEGLosslessSV1:
        stack = frames.reshape(-1, *frames.shape[-2:])
        precision = 16 if signed else bits_stored
        ds.PixelData = encapsulate([encode_jpeg_lossless_sv1(f, precision) for f in stack])
        ds["PixelData"].VR = "OB"
    else:
        ds.file_meta.TransferSyntaxUID = (
            ExplicitVRLittleEndian  # compress() starts from native data
        )
        ds.compress(ts, frames, generate_instance_uid=False)
    if ts in COMPRESSED_SYNTAXES:
        ds.LossyImageCompression = "00"


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file (preamble + meta) in its transfer syntax."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
