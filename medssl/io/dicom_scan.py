"""First pass over DICOM files: headers only, one :class:`SliceRecord` per 2D image.

A single-frame file gives one record; an enhanced multi-frame file gives one per frame
(its geometry from the functional groups); a Siemens mosaic gives one record that the
converter later unpacks. Grouping and sorting (``dicom_stack``) work on records alone,
so a series split across files, frames or archives is handled by one code path.

Original UIDs and patient ids live in records only inside the ingest processes; they are
turned into pseudonyms before anything is written or printed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from functools import cache

from pydicom.dataset import Dataset

from medssl.errors import IngestError
from medssl.io.dicom_frames import (
    SliceInfo,
    SplitKey,
    classic_info,
    enhanced_info,
    philips_scale_slope,
)
from medssl.io.dicom_header import Header, read_header
from medssl.io.dicom_read import (
    decimals_precision,
    integer,
    lenient_reading,
    number,
    numbers,
    read_dataset,
    read_dataset_and_frames,
    tag_text,
)
from medssl.io.sources import SourceItem
from medssl.types import RejectReason

__all__ = ["SliceRecord", "read_dataset", "scan_file"]

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
RT_DOSE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.2"
Vec3 = tuple[float, float, float]
NO_INFO = SliceInfo(SplitKey(), ())  # a record built without frame facts (immutable: one shared default)


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
    info: SliceInfo = NO_INFO
    acquisition: str = ""
    instance: int = 0
    mosaic_tiles: int = 0  # > 0: a Siemens mosaic holding this many slices
    mosaic_normal: Vec3 | None = None
    samples_per_pixel: int = 1
    photometric: str = "MONOCHROME2"
    burned_in: str = ""  # BurnedInAnnotation as written ("YES", "NO" or "" when absent)
    nbytes: int = 0  # size of the file: of two copies of one instance, the larger is whole
    gantry_tilt: float = 0.0  # GantryDetectorTilt in degrees (0 when absent)
    position_precision: float = 0.0  # rounding bound of the written IPP/IOP values, in mm at 100 mm
    scaling: str = "rescale"  # "rescale" (modality LUT) or "philips_precise" (dcm2niix's default)
    projection: bool = False  # a localizer / scout or an image without a patient frame: stored 2D
    spacing_between: float | None = None  # SpacingBetweenSlices (mosaics, header-geometry multi-frame)
    frames_span: tuple[int, int] | None = None  # bytes of the per-frame functional groups: cut out, not re-read, when decoding
    bits_allocated: int = 16
    bits_stored: int = 16
    signed: bool = False  # PixelRepresentation 1
    native_pixels: int | None = None  # file offset of uncompressed little-endian single-frame pixels: decoded without pydicom

    @property
    def split_key(self) -> SplitKey:
        return self.info.split


def scan_file(item: SourceItem, data: bytes, *, fast: bool = True) -> list[SliceRecord]:
    """Records for every image in one DICOM file (an empty list for a DICOMDIR).

    ``fast``: classic uncompressed files are read through ``dicom_header`` (same values,
    a fraction of the time); ``False`` forces pydicom's reader (tests compare the two).
    """
    try:  # a header pydicom cannot even read (a VR it does not know: NotImplementedError) is malformed
        header = read_header(data) if fast else None
        if header is not None and not _mosaic_header(header):
            ds, per_frame, span = header, header.frame_items, header.frames_span
        else:
            ds, per_frame, span = read_dataset_and_frames(data, stop_before_pixels=True)
        with lenient_reading():
            records = _records(item, ds, len(data), per_frame, span)
            if len(records) == 1 and records[0].frame is None:
                records = [replace(records[0], native_pixels=_native_pixels(ds, data, records[0]))]
            return records
    except IngestError:
        raise
    except Exception as exc:  # noqa: BLE001 - values the checks did not foresee
        raise IngestError(RejectReason.MALFORMED, f"invalid DICOM attribute value ({type(exc).__name__})") from None


def _mosaic_header(header: Header) -> bool:
    """A Siemens mosaic: its CSA header is read by nibabel, which wants a pydicom Dataset."""
    with lenient_reading():
        return "MOSAIC" in [str(v).upper() for v in (header.get("ImageType") or [])]


def _records(item: SourceItem, ds: Dataset, nbytes: int, per_frame: list | None = None, span: tuple[int, int] | None = None) -> list[SliceRecord]:
    sop_class = str(ds.get("SOPClassUID", "") or getattr(ds.get("file_meta", Dataset()), "MediaStorageSOPClassUID", ""))
    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return []
    if "Rows" not in ds or "Columns" not in ds:
        raise IngestError(RejectReason.NO_PIXELS, "DICOM object without an image (no Rows/Columns)")
    for keyword in ("SeriesInstanceUID", "SOPInstanceUID"):
        if not str(ds.get(keyword, "") or "").strip():
            raise IngestError(RejectReason.MALFORMED, f"required attribute {keyword} is missing")
    rows, cols = integer(ds.get("Rows"), -1), integer(ds.get("Columns"), -1)
    if rows <= 0 or cols <= 0 or rows * cols > 1 << 28:
        raise IngestError(RejectReason.TOO_LARGE if rows > 0 and cols > 0 else RejectReason.MALFORMED, f"implausible image size {rows}x{cols} in {tag_text(0x00280010)}/{tag_text(0x00280011)}")
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    base = dict(
        item=item,
        patient_id=str(ds.get("PatientID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.SeriesInstanceUID),
        sop_uid=str(ds.SOPInstanceUID),
        modality=str(ds.get("Modality", "OT") or "OT").upper(),
        rows=rows,
        cols=cols,
        samples_per_pixel=integer(ds.get("SamplesPerPixel"), 1),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper(),
        burned_in=str(ds.get("BurnedInAnnotation", "")).strip().upper(),
        acquisition=str(ds.get("AcquisitionNumber", "")),
        instance=integer(ds.get("InstanceNumber")),
        gantry_tilt=number(ds.get("GantryDetectorTilt"), 0.0),
        nbytes=nbytes,
        spacing_between=number(ds.get("SpacingBetweenSlices"), None),
        bits_allocated=integer(ds.get("BitsAllocated"), 16),
        bits_stored=integer(ds.get("BitsStored"), 0) or integer(ds.get("BitsAllocated"), 16),
        signed=integer(ds.get("PixelRepresentation"), 0) == 1,
        frames_span=span,
    )
    n_frames = integer(ds.get("NumberOfFrames"), 1)
    if per_frame is not None or "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_records(ds, base, n_frames, per_frame if per_frame is not None else ds.PerFrameFunctionalGroupsSequence)
    precise = philips_scale_slope(ds) if str(ds.get("Manufacturer", "")).upper().startswith("PHILIPS") else None
    slope, intercept = number(ds.get("RescaleSlope"), 1.0) or 1.0, number(ds.get("RescaleIntercept"), 0.0)
    if sop_class == RT_DOSE_SOP_CLASS:
        slope, intercept = number(ds.get("DoseGridScaling"), 1.0) or 1.0, 0.0
    common = dict(
        ipp=numbers(ds, "ImagePositionPatient", 3),
        iop=numbers(ds, "ImageOrientationPatient", 6),
        pixel_spacing=numbers(ds, "PixelSpacing", 2) or numbers(ds, "ImagerPixelSpacing", 2),
        slice_thickness=number(ds.get("SliceThickness"), None),
        slope=slope if precise is None else 1.0 / precise,
        intercept=intercept if precise is None else intercept / (slope * precise),
        scaling="rescale" if precise is None else "philips_precise",
        info=classic_info(ds),
        position_precision=_precision(ds),
        projection="LOCALIZER" in image_type,
        **base,
    )
    if n_frames > 1:
        return _header_frames(ds, common, n_frames, sop_class)
    tiles, normal = _mosaic(ds)
    return [SliceRecord(frame=None, mosaic_tiles=tiles, mosaic_normal=normal, **common)]


NATIVE_LE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


def _native_pixels(ds: Dataset, data: bytes, rec: SliceRecord) -> int | None:
    """Offset of the pixel values when they can be read straight from the bytes, else None.

    Uncompressed little-endian grey images of 8 or 16 bits whose PixelData element starts
    where the header ends and holds at least what the header promises.
    """
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax not in NATIVE_LE or rec.samples_per_pixel != 1 or rec.bits_allocated not in (8, 16) or rec.mosaic_tiles:
        return None
    needed = rec.rows * rec.cols * rec.bits_allocated // 8
    if isinstance(ds, Header):  # the walk kept the PixelData element only when its value is whole
        return ds.pixel_value_offset if ds.pixel_value_length >= needed else None
    from medssl.io.dicom_read import pixel_value_offset

    return pixel_value_offset(ds, data, needed)


def _precision(ds: Dataset) -> float:
    """How far rounding of the written IPP/IOP strings can move a slice origin 100 mm out (mm)."""
    return decimals_precision(ds, "ImagePositionPatient") + 100.0 * decimals_precision(ds, "ImageOrientationPatient")


def _header_frames(ds: Dataset, common: dict, n_frames: int, sop_class: str) -> list[SliceRecord]:
    """A multi-frame object without functional groups (RT dose, NM, Philips classic, US cine).

    Frames are slices along the normal when the header says where they lie: RT dose by
    GridFrameOffsetVector, NM tomography by its detector's IPP/IOP and SpacingBetweenSlices,
    other MR/CT multi-frame by SpacingBetweenSlices (or SliceThickness). Without a patient
    frame (US cine, planar NM) every frame is a 2D image.
    """
    ipp, iop = common["ipp"], common["iop"]
    detector = ds.get("DetectorInformationSequence")
    if (ipp is None or iop is None) and detector:
        ipp, iop = numbers(detector[0], "ImagePositionPatient", 3), numbers(detector[0], "ImageOrientationPatient", 6)
    offsets = None
    if sop_class == RT_DOSE_SOP_CLASS and "GridFrameOffsetVector" in ds:
        offsets = [float(v) for v in ds.GridFrameOffsetVector]
        if len(offsets) != n_frames:
            raise IngestError(RejectReason.GEOMETRY, f"{tag_text(0x3004000C)} (GridFrameOffsetVector) holds {len(offsets)} offsets for {n_frames} frames")
        if offsets[0] != 0 and ipp is not None:  # absolute z positions (axial only, PS3.3 C.8.8.3.2)
            offsets = [v - ipp[2] for v in offsets]
    elif ipp is not None and iop is not None:
        step = number(ds.get("SpacingBetweenSlices"), None) or number(ds.get("SliceThickness"), None)
        if step:
            offsets = [k * step for k in range(n_frames)]
    frame_time = number(ds.get("FrameTime"), None)  # ms between frames of a cine
    records = []
    for index in range(n_frames):
        geo = {"ipp": None, "iop": None, "projection": True}
        if offsets is not None and ipp is not None and iop is not None:
            row, col = iop[:3], iop[3:]
            normal = (row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2], row[0] * col[1] - row[1] * col[0])
            geo = {"ipp": tuple(p + offsets[index] * n for p, n in zip(ipp, normal)), "iop": iop, "projection": common["projection"]}
        info = replace(common["info"], frame_order=(*common["info"].frame_order, index), seconds=None if frame_time is None else index * frame_time / 1000.0)
        records.append(SliceRecord(**{**common, **geo, "info": info, "frame": index, "sop_uid": f"{common['sop_uid']}#{index}"}))
    return records


def _enhanced_records(ds: Dataset, base: dict, n_frames: int, per_frame) -> list[SliceRecord]:
    """One record per frame; ``per_frame``: pydicom Datasets or ``dicom_raw.RawItem`` trees (same reads)."""
    if len(per_frame) != n_frames:
        raise IngestError(RejectReason.MALFORMED, f"{len(per_frame)} per-frame groups for {n_frames} frames")
    shared_raw = ds.shared_items if isinstance(ds, Header) else None
    if shared_raw:  # the fast header read them from the bytes: no pydicom sequence to build
        shared = shared_raw[0]
    else:
        shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else Dataset()
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    precise = philips_scale_slope(ds)
    philips = str(ds.get("Manufacturer", "")).upper().startswith("PHILIPS")

    @cache
    def shared_value(seq: str, keyword: str):  # the shared groups are the same for every frame: look once
        found = shared.get(seq)
        return found[0][keyword].value if found and keyword in found[0] else None

    @cache
    def shared_vector(seq: str, keyword: str, count: int):
        found = shared.get(seq)
        return numbers(found[0], keyword, count) if found and keyword in found[0] else None

    records = []
    for index, group in enumerate(per_frame):
        def item(seq: str, keyword: str, group=group):
            found = group.get(seq)
            if found and keyword in found[0]:
                return found[0][keyword].value
            return shared_value(seq, keyword)

        def vector(seq: str, keyword: str, count: int, group=group):
            found = group.get(seq)
            if found and keyword in found[0]:
                return numbers(found[0], keyword, count)
            return shared_vector(seq, keyword, count)

        content = group.get("FrameContentSequence")
        content = content[0] if content else Dataset()
        slope = number(item("PixelValueTransformationSequence", "RescaleSlope"), number(ds.get("RescaleSlope"), 1.0)) or 1.0
        intercept = number(item("PixelValueTransformationSequence", "RescaleIntercept"), number(ds.get("RescaleIntercept"), 0.0))
        frame_precise = _frame_scale_slope(group, precise) if philips else None
        records.append(
            SliceRecord(
                frame=index,
                ipp=vector("PlanePositionSequence", "ImagePositionPatient", 3),
                iop=vector("PlaneOrientationSequence", "ImageOrientationPatient", 6),
                pixel_spacing=vector("PixelMeasuresSequence", "PixelSpacing", 2),
                slice_thickness=number(item("PixelMeasuresSequence", "SliceThickness"), None),
                slope=slope if frame_precise is None else 1.0 / frame_precise,
                intercept=intercept if frame_precise is None else intercept / (slope * frame_precise),
                scaling="rescale" if frame_precise is None else "philips_precise",
                info=enhanced_info(item, content, index),
                projection="LOCALIZER" in image_type,
                **{**base, "sop_uid": f"{base['sop_uid']}#{index}"},
            )
        )
    return records


def _frame_scale_slope(group: Dataset, default: float | None) -> float | None:
    """Philips keeps the per-frame MR Scale Slope in a private sequence of the frame's groups."""
    found = philips_scale_slope(group, nested=True)
    if found is None:
        for elem in group:
            if elem.VR == "SQ" and len(elem.value) and int(elem.tag) >> 16 != 0x2005:
                found = philips_scale_slope(elem.value[0], nested=True)
                if found is not None:
                    break
    return found if found is not None else default


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
