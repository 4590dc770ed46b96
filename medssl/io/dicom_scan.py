"""First pass over DICOM files: headers only, one :class:`SliceRecord` per 2D image.

A single-frame file gives one record; an enhanced multi-frame file gives one per frame
(its geometry from the functional groups); a Siemens mosaic gives one record that the
converter later unpacks. Grouping and sorting (``dicom_stack``) work on records alone,
so a series split across files, frames or archives is handled by one code path.

Original UIDs and patient ids live in records only inside the ingest processes; they are
turned into pseudonyms before anything is written or printed.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medssl.errors import IngestError
from medssl.io.sources import SourceItem
from medssl.types import RejectReason

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class SliceRecord:
    """Geometry and grouping keys of one 2D image (a file, or a frame of one)."""

    item: SourceItem
    frame: int | None  # frame index in a multi-frame file; None for single-frame files
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    rows: int
    cols: int
    ipp: Vec3 | None  # ImagePositionPatient (LPS, mm) of the first transmitted pixel
    iop: tuple[float, float, float, float, float, float] | None  # row cosine, column cosine
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) in mm
    slice_thickness: float | None
    slope: float = 1.0
    intercept: float = 0.0
    split_key: tuple = ()  # echo, temporal position, stack id: never merged into one volume
    acquisition: str = ""
    instance: int = 0
    mosaic_tiles: int = 0  # > 0: a Siemens mosaic holding this many slices
    mosaic_normal: Vec3 | None = None
    samples_per_pixel: int = 1
    photometric: str = "MONOCHROME2"
    burned_in: str = ""  # BurnedInAnnotation as written ("YES", "NO" or "" when absent)
    nbytes: int = 0  # size of the file: of two copies of one instance, the larger is whole
    gantry_tilt: float = 0.0
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@contextmanager
def strict_reading() -> Iterator[None]:
    """pydicom raises on invalid values instead of warning (the issue's strict mode)."""
    settings = pydicom.config.settings
    old = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.RAISE
    try:
        yield
    finally:
        settings.reading_validation_mode = old


def read_dataset(data: bytes, *, stop_before_pixels: bool) -> Dataset:
    """Parse DICOM bytes strictly; every failure becomes an :class:`IngestError`.

    Exception texts from pydicom can quote element values, so they are never passed on:
    the message names only the exception type.
    """
    force = not (len(data) >= 132 and data[128:132] == b"DICM")
    try:
        with strict_reading():
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels, force=force)
            ds.file_meta  # noqa: B018 - touch lazily parsed parts inside the strict context
    except InvalidDicomError:
        raise IngestError(RejectReason.NOT_AN_IMAGE, "not a DICOM file") from None
    except (EOFError, OSError) as exc:
        raise IngestError(RejectReason.TRUNCATED, f"DICOM file ends early ({type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad input
        raise IngestError(RejectReason.MALFORMED, f"DICOM header unreadable ({type(exc).__name__})") from None
    if len(ds) == 0:
        raise IngestError(RejectReason.MALFORMED, "DICOM file holds no data elements")
    _check_complete(ds, len(data), stop_before_pixels)
    return ds


def _check_complete(ds: Dataset, size: int, stop_before_pixels: bool) -> None:
    """Refuse a file that ends inside an element.

    pydicom hands back a short value when the file ends inside an element's value, and
    stops silently when it ends inside the next element's 8-12 byte header; both are
    caught here from the raw elements' offsets, without converting any value.
    """
    end = 0
    for elem in ds.elements():  # raw elements: nothing is converted here
        length = getattr(elem, "length", None)
        value = getattr(elem, "value", None)
        if length is None or length == 0xFFFFFFFF:
            end = -1  # undefined length (sequence, encapsulated pixels): its end is not known here
            continue
        if isinstance(value, (bytes, bytearray)) and len(value) < length:
            raise IngestError(RejectReason.TRUNCATED, f"file ends inside element {elem.tag} ({len(value)} of {length} bytes)")
        tell = getattr(elem, "value_tell", None)
        if tell is not None:
            end = tell + length
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if end <= 0 or syntax == "1.2.840.10008.1.2.1.99":  # offsets of a deflated stream are not file offsets
        return
    leftover = size - end
    if (not stop_before_pixels and leftover > 0) or 0 < leftover < 8:
        raise IngestError(RejectReason.TRUNCATED, f"file ends inside an element header ({leftover} bytes after the last whole element)")


def scan_file(item: SourceItem, data: bytes) -> list[SliceRecord]:
    """Records for every image in one DICOM file (an empty list for a DICOMDIR)."""
    ds = read_dataset(data, stop_before_pixels=True)
    try:
        with strict_reading():
            return _records(item, ds, len(data))
    except IngestError:
        raise
    except Exception as exc:  # noqa: BLE001 - invalid values surface on access
        raise IngestError(RejectReason.MALFORMED, f"invalid DICOM attribute value ({type(exc).__name__})") from None


def _records(item: SourceItem, ds: Dataset, nbytes: int) -> list[SliceRecord]:
    sop_class = str(ds.get("SOPClassUID", "") or getattr(ds.get("file_meta", Dataset()), "MediaStorageSOPClassUID", ""))
    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return []
    if "Rows" not in ds or "Columns" not in ds:
        raise IngestError(RejectReason.NO_PIXELS, "DICOM object without an image (no Rows/Columns)")
    for keyword in ("SeriesInstanceUID", "SOPInstanceUID"):
        if not ds.get(keyword):
            raise IngestError(RejectReason.MALFORMED, f"required attribute {keyword} is missing")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows <= 0 or cols <= 0 or rows * cols > 1 << 28:
        raise IngestError(RejectReason.TOO_LARGE, f"implausible image size {rows}x{cols}")
    base = dict(
        item=item,
        patient_id=str(ds.get("PatientID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.SeriesInstanceUID),
        sop_uid=str(ds.SOPInstanceUID),
        modality=str(ds.get("Modality", "OT")).upper(),
        rows=rows,
        cols=cols,
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1)),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        burned_in=str(ds.get("BurnedInAnnotation", "")).strip().upper(),
        acquisition=str(ds.get("AcquisitionNumber", "")),
        instance=_int(ds.get("InstanceNumber")),
        gantry_tilt=_float(ds.get("GantryDetectorTilt"), 0.0),
        nbytes=nbytes,
    )
    n_frames = _int(ds.get("NumberOfFrames"), 1)
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_records(ds, base, n_frames)
    if n_frames > 1:
        raise IngestError(RejectReason.UNSUPPORTED, f"multi-frame object of {n_frames} frames without functional groups (SOP class {sop_class})")
    ipp = _vec(ds.get("ImagePositionPatient"), 3)
    iop = _vec(ds.get("ImageOrientationPatient"), 6)
    spacing = _vec(ds.get("PixelSpacing"), 2) or _vec(ds.get("ImagerPixelSpacing"), 2)
    tiles, normal = _mosaic(ds)
    split = (
        _float(ds.get("EchoNumbers"), 0.0) or _float(ds.get("EchoTime"), 0.0),
        _int(ds.get("TemporalPositionIdentifier")),
        _float(ds.get("DiffusionBValue"), 0.0),
        "LOCALIZER" in [str(v).upper() for v in (ds.get("ImageType") or [])],
    )
    return [
        SliceRecord(
            frame=None,
            ipp=ipp,
            iop=iop,
            pixel_spacing=spacing,
            slice_thickness=_float(ds.get("SliceThickness"), None),
            slope=_float(ds.get("RescaleSlope"), 1.0) or 1.0,
            intercept=_float(ds.get("RescaleIntercept"), 0.0),
            split_key=split,
            mosaic_tiles=tiles,
            mosaic_normal=normal,
            **base,
        )
    ]


def _enhanced_records(ds: Dataset, base: dict, n_frames: int) -> list[SliceRecord]:
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != n_frames:
        raise IngestError(RejectReason.MALFORMED, f"{len(per_frame)} per-frame groups for {n_frames} frames")
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0] if ds.get("SharedFunctionalGroupsSequence") else Dataset()
    records = []
    for index, group in enumerate(per_frame):
        def item(seq: str, keyword: str, group=group):
            for source in (group, shared):
                if seq in source and len(source[seq].value) and keyword in source[seq].value[0]:
                    return source[seq].value[0][keyword].value
            return None

        content = group.get("FrameContentSequence", [Dataset()])[0] if group.get("FrameContentSequence") else Dataset()
        split = (
            _float(item("MREchoSequence", "EffectiveEchoTime"), 0.0),
            _int(content.get("TemporalPositionIndex")),
            str(content.get("StackID", "")),
            _float(item("MRDiffusionSequence", "DiffusionBValue"), 0.0),
        )
        records.append(
            SliceRecord(
                frame=index,
                ipp=_vec(item("PlanePositionSequence", "ImagePositionPatient"), 3),
                iop=_vec(item("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
                pixel_spacing=_vec(item("PixelMeasuresSequence", "PixelSpacing"), 2),
                slice_thickness=_float(item("PixelMeasuresSequence", "SliceThickness"), None),
                slope=_float(item("PixelValueTransformationSequence", "RescaleSlope"), _float(ds.get("RescaleSlope"), 1.0)) or 1.0,
                intercept=_float(item("PixelValueTransformationSequence", "RescaleIntercept"), _float(ds.get("RescaleIntercept"), 0.0)),
                split_key=split,
                **{**base, "sop_uid": f"{base['sop_uid']}#{index}"},
            )
        )
    return records


def _mosaic(ds: Dataset) -> tuple[int, Vec3 | None]:
    """Number of tiles and slice normal of a Siemens mosaic, from its CSA image header."""
    if "MOSAIC" not in [str(v).upper() for v in (ds.get("ImageType") or [])]:
        return 0, None
    with warnings.catch_warnings():  # nibabel warns about its DICOM *readers*; we use only the CSA parser
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import csareader

    try:
        csa = csareader.get_csa_header(ds, "image")
        tiles = csareader.get_n_mosaic(csa)
        normal = csareader.get_slice_normal(csa)
    except Exception:  # noqa: BLE001 - corrupt private header
        raise IngestError(RejectReason.MALFORMED, "mosaic image with an unreadable Siemens CSA header") from None
    if not tiles or normal is None:
        raise IngestError(RejectReason.GEOMETRY, "mosaic image without NumberOfImagesInMosaic / SliceNormalVector")
    return int(tiles), tuple(float(v) for v in normal)


def _vec(value, n: int) -> tuple | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in (value if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str) else [value]))
    except (TypeError, ValueError):
        raise IngestError(RejectReason.GEOMETRY, f"geometry attribute with non-numeric values (expected {n} numbers)") from None
    if len(out) != n or any(v != v or abs(v) > 1e7 for v in out):
        raise IngestError(RejectReason.GEOMETRY, f"geometry attribute with {len(out)} values (expected {n} finite numbers)")
    return out


def _float(value, default):
    try:
        return float(value) if value is not None and str(value).strip() != "" else default
    except (TypeError, ValueError):
        return default


def _int(value, default: int = 0) -> int:
    try:
        return int(value) if value is not None and str(value).strip() != "" else default
    except (TypeError, ValueError):
        return default
