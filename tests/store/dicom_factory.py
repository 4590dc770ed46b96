"""Small real DICOM series for the store tests, built from pydicom's packaged images.

A series is ``n`` copies of one real image (CT_small: 128x128 CT with a rescale to HU;
MR_small: 64x64 MR) given fresh SOP instance UIDs, one shared series UID, and
ImagePositionPatient stepping along the slice normal. Each slice's stored pixels are
offset by ``pixel_step * k`` so that slice order is visible in the written volume.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

CT = "CT_small.dcm"
MR = "MR_small.dcm"


def testdata(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"pydicom test file {name} is not installed")
    return Path(path)


def read_template(name: str = CT) -> Dataset:
    return pydicom.dcmread(testdata(name))


def ds_str(value: float) -> str:
    """A decimal string that fits DICOM's 16-character DS limit (strict readers refuse longer)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def slice_normal(ds: Dataset) -> np.ndarray:
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    return np.cross(iop[:3], iop[3:])


def make_series(
    n: int,
    *,
    template: str = CT,
    step: float | None = None,
    series_uid: str | None = None,
    pixel_step: int = 10,
    positions: Sequence[float] | None = None,
) -> list[Dataset]:
    """``n`` slices of one series in position order (slice k at ``k * step`` mm along the normal)."""
    base = read_template(template)
    step = float(step if step is not None else (base.get("SliceThickness") or 5.0))
    series_uid = series_uid or generate_uid()
    origin = np.array([float(v) for v in base.ImagePositionPatient])
    normal = slice_normal(base)
    pixels = base.pixel_array
    offsets = list(positions) if positions is not None else [k * step for k in range(n)]
    out = []
    for k, offset in enumerate(offsets):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagePositionPatient = [ds_str(v) for v in origin + offset * normal]
        if "SliceLocation" in ds:
            ds.SliceLocation = ds_str(float(np.dot(origin + offset * normal, normal)))
        ds.InstanceNumber = k + 1
        ds.PixelData = (pixels + pixel_step * k).astype(pixels.dtype).tobytes()
        out.append(ds)
    return out


def write(
    datasets: Sequence[Dataset], folder: Path, names: Sequence[str] | None = None
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(datasets):
        path = folder / (names[k] if names is not None else f"slice{k:03d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_series(folder: Path, n: int, **kwargs) -> list[Path]:
    return write(make_series(n, **kwargs), folder)


def hounsfield(ds: Dataset) -> np.ndarray:
    """The modality LUT by hand: stored value * RescaleSlope + RescaleIntercept, [rows, cols]."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return ds.pixel_array.astype(np.float64) * slope + intercept


def world_lps(ds: Dataset) -> np.ndarray:
    """World position (LPS, mm) of every pixel centre of one slice, [rows, cols, 3] (PS3.3 C.7.6.2.1.1)."""
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    dy, dx = (float(v) for v in ds.PixelSpacing)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    r, c = np.meshgrid(np.arange(int(ds.Rows)), np.arange(int(ds.Columns)), indexing="ij")
    return ipp + (c[..., None] * dx) * iop[:3] + (r[..., None] * dy) * iop[3:]
