"""Upload bodies for the service tests: real small DICOM series, zips and NIfTI files."""

from __future__ import annotations

import io
import zipfile

import nibabel as nib
import numpy as np

from tests.store.dicom_factory import make_series, to_bytes


def dicom_series(n: int = 3) -> list[bytes]:
    return [to_bytes(ds) for ds in make_series(n)]


def multipart_files(blobs: list[bytes], content_type: str = "application/octet-stream") -> list:
    return [("file", (f"slice{i}.dcm", blob, content_type)) for i, blob in enumerate(blobs)]


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def nifti_bytes(shape=(16, 16, 8), dtype=np.int16) -> bytes:
    array = (np.arange(np.prod(shape)) % 100).reshape(shape).astype(dtype)
    img = nib.Nifti1Image(array, np.diag([1.5, 1.5, 3.0, 1.0]))
    return img.to_bytes()
