"""Declared-size bombs are refused before anything is allocated (issue 15, item 2): a small
upload declaring a legal but huge volume, a NIfTI whose ``vox_offset`` inflates to 1 GB,
DICOM headers declaring thousands of frames; the answer names the size, the estimate and the
budget, the server's memory stays flat, and ``/metrics`` reports each prediction's peak."""

from __future__ import annotations

import gzip
import io
import time
import zlib

import httpx
import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread

from tests.inference.server.conftest import AUTH
from tests.inference.server.payloads import dicom_series, nifti_bytes

MIB = 1 << 20


def declared_nifti_gz(shape: tuple[int, ...], dtype=np.uint8, vox_offset: int = 352) -> bytes:
    """A whole ``.nii.gz`` of zeros of ``shape`` (streamed: the zeros never sit in memory)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = vox_offset
    header["magic"] = b"n+1"
    header.set_zooms((1.0,) * len(shape))
    deflate = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [deflate.compress(header.binaryblock + b"\0" * (vox_offset - 348))]
    left = int(np.prod(shape)) * np.dtype(dtype).itemsize
    zeros = bytes(16 * MIB)
    while left > 0:
        out.append(deflate.compress(zeros[: min(left, len(zeros))]))
        left -= len(zeros)
    out.append(deflate.flush())
    return b"".join(out)


def many_frames_dicom() -> bytes:
    """One small DICOM file whose header declares 4000 frames of 2048 x 2048."""
    ds = dcmread(io.BytesIO(dicom_series(1)[0]))
    ds.Rows = ds.Columns = 2048
    ds.NumberOfFrames = 4000
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def budget_server(server_factory):
    """A 1 GiB memory budget (the threshold predictor alone holds ~0.2 GiB)."""
    running = server_factory({"settings": {"memory_budget_gb": 1.0}})
    assert running.wait_ready().status_code == 200
    return running


def _post(server, blob: bytes, name: str = "x.nii.gz") -> httpx.Response:
    files = [("file", (name, blob, "application/octet-stream"))]
    return httpx.post(server.url + "/v1/predict", files=files, headers=AUTH, timeout=60)


def test_a_small_upload_declaring_1024x1024x256_is_413_before_it_is_read(budget_server):
    bomb = declared_nifti_gz((1024, 1024, 256))
    assert len(bomb) < 2 * MIB  # ~1 MB on the wire, 256 MiB of voxels declared
    assert _post(budget_server, nifti_bytes(), "ok.nii").status_code == 200  # warm
    before = budget_server.rss_kib()
    start = time.perf_counter()
    r = _post(budget_server, bomb)
    assert r.status_code == 413 and r.json()["error"] == "too_large", r.text
    detail = r.json()["detail"]
    assert "1024x1024x256 of 1-byte voxels" in detail and "GiB" in detail
    assert "memory budget 1.0 GiB" in detail
    assert time.perf_counter() - start < 5.0
    assert budget_server.rss_kib() - before < 64 * 1024  # nothing near 256 MiB was allocated


def test_a_vox_offset_of_1e9_is_413_not_a_gigabyte_inflated(budget_server):
    header = nib.Nifti1Header()
    header.set_data_shape((16, 16, 8))
    header["vox_offset"] = 1e9
    header["magic"] = b"n+1"
    bomb = gzip.compress(header.binaryblock + b"\0" * 4 + bytes(MIB))  # truncated on purpose
    before = budget_server.rss_kib()
    r = _post(budget_server, bomb)
    assert r.status_code == 413 and r.json()["error"] == "too_large", r.text
    assert budget_server.rss_kib() - before < 64 * 1024


def test_dicom_headers_declaring_4000_frames_are_413(budget_server):
    r = _post(budget_server, many_frames_dicom(), "x.dcm")
    assert r.status_code == 413 and "2048x2048x4000 of 2-byte voxels" in r.json()["detail"]


def test_a_volume_within_the_budget_is_served_and_its_peak_is_in_metrics(budget_server):
    r = _post(budget_server, declared_nifti_gz((64, 64, 32)))
    assert r.status_code == 200, r.text
    metrics = httpx.get(budget_server.url + "/metrics", headers=AUTH).text
    assert "medssl_prediction_peak_rss_bytes_count" in metrics
    last = next(
        line for line in metrics.splitlines() if line.startswith("medssl_prediction_last_peak")
    )
    assert float(last.split()[1]) > 50 * MIB  # the process's resident set, model included
