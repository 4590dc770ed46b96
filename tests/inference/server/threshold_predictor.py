"""A small real predictor for the service tests: reads its input with medssl.io, thresholds it.

It validates input exactly as ingest does (the same readers, the same refusals), so the
service's answers to broken uploads are the answers the real model would give. Outputs:
``json`` (counts), ``nifti`` (``segmentation.nii.gz``, the mask), ``seg`` (``seg.dcm``,
the mask's middle slice as a DICOM Secondary Capture: a stand-in for a real SEG, enough to
exercise STOW-RS).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medssl.errors import IngestError
from medssl.inference.cancel import check_cancelled
from medssl.inference.predictor import InputError, Prediction, PredictionRequest
from medssl.io.dicom_scan import scan_file
from medssl.io.dicom_stack import build_stacks
from medssl.io.dicom_volume import read_stack
from medssl.io.nifti import read_nifti, read_nrrd
from medssl.io.sources import BadItem, FileFormat, SourceItem, iter_source_items, sniff_format
from medssl.io.volume import Volume, nifti_gz_bytes

MAX_BYTES = 256 << 20


def read_volume(paths: tuple[Path, ...]) -> Volume:
    """The one volume behind uploaded files (DICOM files, a zip of them, or NIfTI/NRRD)."""
    items: list[SourceItem] = []
    for path in paths:
        for entry in iter_source_items(path):
            if isinstance(entry, BadItem):
                raise InputError(entry.error.message)
            items.append(entry)
    records = []
    for index, item in enumerate(items):
        data = item.read_bytes(MAX_BYTES)
        fmt = sniff_format(data[:352], item.suffix())
        if fmt == FileFormat.NIFTI and len(items) == 1:
            return read_nifti(data, max_bytes=MAX_BYTES)
        if fmt == FileFormat.NRRD and len(items) == 1:
            return read_nrrd(data, max_bytes=MAX_BYTES)
        if fmt != FileFormat.DICOM:
            raise InputError(f"file {index + 1} of {len(items)}: not DICOM (or not alone)")
        records.extend(scan_file(item, data))
    stacks, failed = build_stacks(records)
    if failed:
        raise InputError(failed[0][1].message)
    if len(stacks) != 1:
        raise InputError(f"expected one image series, found {len(stacks)}")
    volume, _header = read_stack(stacks[0], lambda item: item.read_bytes(MAX_BYTES))
    return volume


class ThresholdPredictor:
    """Voxels above ``threshold`` are foreground; ``delay_s`` makes it slow on purpose."""

    def __init__(self, threshold: float = 0.0, delay_s: float = 0.0, warmup_s: float = 0.0) -> None:
        self.threshold, self.delay_s, self.warmup_s = threshold, delay_s, warmup_s
        self.info = {
            "name": "threshold",
            "task": "segmentation",
            "labels": ["background", "foreground"],
            "artifact_sha256": None,
        }

    def warmup(self) -> None:
        time.sleep(self.warmup_s)

    def predict(self, request: PredictionRequest) -> Prediction:
        try:
            volume = read_volume(request.inputs)
        except IngestError as err:
            raise InputError(err.message) from None
        end = time.monotonic() + self.delay_s
        while time.monotonic() < end:  # slow on purpose, but stops when the request is given up
            check_cancelled()
            time.sleep(min(0.05, max(end - time.monotonic(), 0.0)))
        mask = (np.asarray(volume.array) > self.threshold).astype(np.uint8)
        summary = {
            "shape": list(mask.shape),
            "foreground_voxels": int(mask.sum()),
            "spacing_mm": [round(s, 4) for s in volume.spacing],
        }
        out = request.output_dir
        files: dict[str, Path] = {}
        if "nifti" in request.outputs:
            files["segmentation.nii.gz"] = out / "segmentation.nii.gz"
            files["segmentation.nii.gz"].write_bytes(nifti_gz_bytes(Volume(mask, volume.affine)))
        if "seg" in request.outputs:
            files["seg.dcm"] = out / "seg.dcm"
            _secondary_capture(mask[:, :, mask.shape[2] // 2], files["seg.dcm"])
        return Prediction(summary, files)


def _secondary_capture(plane: np.ndarray, path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality, ds.ConversionType = "PSEUDO-1", "OT", "WSD"
    ds.Rows, ds.Columns = plane.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(plane.T, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
