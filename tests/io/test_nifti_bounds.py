"""Spec (issue 15, items 2 and 6): what a NIfTI header declares is bounded before it is used.

- ``vox_offset`` plus the data it implies is what a ``.nii.gz`` inflates to: past the
  configured budget (``--max-gb``) it is refused before one byte is inflated.
- Geometry is checked on every input and on every volume written: ``pixdim = 1e38`` was
  stored with ``-inf`` in its affine while the manifest said finite.
"""

from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib

import nibabel as nib
import numpy as np
import pytest

from medssl.errors import IngestError
from medssl.io.geometry_check import check_geometry
from medssl.io.nifti import read_nifti, read_nrrd
from medssl.io.volume import Volume, nifti_gz_bytes
from medssl.types import RejectReason
from tests.store import store_view as sv
from tests.store.ingest_run import run

MIB = 1 << 20


def _padded_gz(offset: int, shape=(8, 8, 8)) -> bytes:
    """A .nii.gz whose vox_offset puts ``offset`` bytes (zeros: they compress ~1000x) before its voxels."""
    header = bytearray(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)).header.binaryblock)
    struct.pack_into("<f", header, 108, float(offset))
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [comp.compress(bytes(header) + b"\0" * 4)]
    left, chunk = offset - 352, b"\0" * MIB
    while left > 0:
        out.append(comp.compress(chunk[: min(left, MIB)]))
        left -= MIB
    out.append(comp.compress(np.zeros(shape, np.int16).tobytes()))
    out.append(comp.flush())
    return b"".join(out)


def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
    except IngestError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / MIB


def test_an_offset_past_the_budget_is_refused_before_inflating():
    data = _padded_gz(48 * MIB)  # under the 64 MiB extension bound, over a 16 MiB budget
    assert len(data) < MIB // 4
    with pytest.raises(IngestError) as err:
        read_nifti(data, max_bytes=16 * MIB)
    assert err.value.code == RejectReason.TOO_LARGE and "vox_offset" in err.value.message
    assert _peak_mib(lambda: read_nifti(data, max_bytes=16 * MIB)) < 4


def test_an_offset_within_the_budget_still_reads():
    volume = read_nifti(_padded_gz(2 * MIB), max_bytes=16 * MIB)
    assert volume.array.shape == (8, 8, 8)


def test_ingest_at_a_small_budget_refuses_the_bomb_and_stays_small(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "bomb.nii.gz").write_bytes(_padded_gz(48 * MIB))
    peak = _peak_mib(lambda: run(tmp_path / "src", tmp_path / "store", max_bytes=8 * MIB))
    assert [r["code"] for r in sv.rejected(tmp_path / "store")] == ["too_large"]
    assert peak < 16


def _nifti_with_pixdim(value: float) -> bytes:
    raw = bytearray(nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.eye(4)).to_bytes())
    struct.pack_into("<2h", raw, 252, 0, 0)  # qform_code, sform_code: the affine comes from pixdim
    struct.pack_into("<3f", raw, 80, value, value, value)  # pixdim[1..3]
    return gzip.compress(bytes(raw), mtime=0)


@pytest.mark.parametrize("pixdim", [1e38, 1e-12, 5e4])
def test_a_nifti_with_impossible_spacing_is_refused(pixdim):
    with pytest.raises(IngestError) as err:
        read_nifti(_nifti_with_pixdim(pixdim))
    assert err.value.code == RejectReason.GEOMETRY and "spacing" in err.value.message


def test_ingest_refuses_pixdim_1e38_and_writes_no_inf(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "huge.nii.gz").write_bytes(_nifti_with_pixdim(1e38))
    (tmp_path / "src" / "fine.nii.gz").write_bytes(_nifti_with_pixdim(1.25))
    summary = run(tmp_path / "src", tmp_path / "store")
    assert summary.written == 1 and summary.rejected == {"geometry": 1}
    for row in sv.volumes(tmp_path / "store"):
        assert np.all(np.isfinite(nib.load(tmp_path / "store" / row["path"]).affine))


def test_an_origin_float32_cannot_hold_is_refused():
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.diag([1.0, 1.0, 1.0, 1.0]))
    raw = bytearray(img.to_bytes())
    struct.pack_into("<f", raw, 280 + 12, 3e38)  # srow_x[3]
    with pytest.raises(IngestError) as err:
        read_nifti(gzip.compress(bytes(raw)))
    assert err.value.code == RejectReason.GEOMETRY


def test_an_nrrd_with_impossible_spacing_is_refused():
    header = b"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 2 2 2\nspace directions: (1e38,0,0) (0,1,0) (0,0,1)\nencoding: raw\nendian: little\n\n"
    with pytest.raises(IngestError) as err:
        read_nrrd(header + b"\0" * 16)
    assert err.value.code == RejectReason.GEOMETRY


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([1e38, 1.0, 1.0, 1.0]),
        np.diag([0.0, 1.0, 1.0, 1.0]),
        np.diag([np.inf, 1.0, 1.0, 1.0]),
        np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float),
    ],
    ids=["huge", "zero", "inf", "parallel"],
)
def test_no_volume_is_written_with_a_geometry_it_cannot_hold(affine):
    with pytest.raises(IngestError) as err:
        nifti_gz_bytes(Volume(np.zeros((2, 2, 2), np.int16), affine))
    assert err.value.code == RejectReason.GEOMETRY


def test_ordinary_geometries_pass():
    check_geometry(np.diag([0.5, 0.5, 5.0, 1.0]), "volume")  # CT
    check_geometry(np.diag([0.002, 0.002, 0.05, 1.0]), "volume")  # OCT-like sampling
    oblique = np.eye(4)
    oblique[:3, :3] = [[0.7, -0.7, 0], [0.7, 0.7, 0], [0, 0, 3.0]]
    oblique[:3, 3] = [-120.0, 80.0, 1500.0]
    check_geometry(oblique, "volume")


def _nrrd(payload: bytes, encoding: str = "gzip", sizes: str = "2 2 2") -> bytes:
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
        f"sizes: {sizes}\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
        f"encoding: {encoding}\nendian: little\n\n"
    )
    return header.encode() + payload


def test_a_gzip_nrrd_that_inflates_past_the_budget_is_refused_bounded():
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = b"".join([comp.compress(b"\0" * MIB) for _ in range(48)] + [comp.flush()])
    data = _nrrd(bomb)
    with pytest.raises(IngestError) as err:
        read_nrrd(data, max_bytes=4 * MIB)
    assert err.value.code == RejectReason.TOO_LARGE
    assert _peak_mib(lambda: read_nrrd(data, max_bytes=4 * MIB)) < 12


@pytest.mark.parametrize("encoding", ["gzip", "bzip2"])
def test_a_compressed_nrrd_within_the_budget_reads(encoding):
    import bz2

    values = np.arange(8, dtype="<i2")
    payload = (
        gzip.compress(values.tobytes()) if encoding == "gzip" else bz2.compress(values.tobytes())
    )
    volume = read_nrrd(_nrrd(payload, encoding))
    assert sorted(volume.array.ravel().tolist()) == list(range(8))
