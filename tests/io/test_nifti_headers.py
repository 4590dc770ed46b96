"""NIfTI headers as real tools write them: extensions of any size, NIfTI-2, big-endian, and
every NIfTI file nibabel ships; an implausible ``vox_offset`` is refused, never followed."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from medssl.errors import IngestError
from medssl.io.nifti import MAX_HEADER_BYTES, read_nifti
from medssl.types import RejectReason

NIBABEL_DATA = Path(data_path)

# nibabel's NIfTI files that are refused, and why (every other one must read)
NIBABEL_REFUSED = {
    "resampled_anat_moved.nii": RejectReason.MALFORMED,  # NaN outside the field of view
    "row_major.dconn.nii": RejectReason.UNSUPPORTED,  # CIFTI-2 dense connectome: a matrix
}


def _image(nifti2: bool = False, endian: str = "<", extension_bytes: int = 0):
    rng = np.random.default_rng(3)
    array = rng.integers(-1000, 3000, size=(7, 5, 4)).astype(np.int16)
    affine = np.diag([-0.8, 0.8, 2.0, 1.0])
    affine[:3, 3] = [40.0, -30.0, 12.0]
    image_class = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    img = image_class(array, affine)
    if endian == ">":
        img = image_class(array, affine, header=img.header.as_byteswapped(">"))
    if extension_bytes:
        img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"c" * extension_bytes))
    return img, array


def _bytes(img, gz: bool) -> bytes:
    raw = img.to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


@pytest.mark.parametrize("gz", [False, True], ids=["nii", "nii.gz"])
@pytest.mark.parametrize("extension_bytes", [2_000, 100_000])
@pytest.mark.parametrize("nifti2", [False, True], ids=["nifti1", "nifti2"])
def test_header_extensions_of_any_size_are_skipped(gz, extension_bytes, nifti2):
    img, array = _image(nifti2=nifti2, extension_bytes=extension_bytes)
    data = _bytes(img, gz)
    head = gzip.decompress(data)[:600] if gz else data[:600]
    offset = struct.unpack("<q", head[168:176])[0] if nifti2 else int(struct.unpack("<f", head[108:112])[0])
    assert offset > extension_bytes  # the voxels really start past the extension
    vol = read_nifti(data)
    ref = nib.as_closest_canonical(img)
    np.testing.assert_array_equal(vol.array, np.asanyarray(ref.dataobj))
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-6)
    assert vol.array.dtype == np.int16


@pytest.mark.parametrize("nifti2", [False, True], ids=["nifti1", "nifti2"])
def test_big_endian_with_an_extension_reads_in_native_order(nifti2):
    img, array = _image(nifti2=nifti2, endian=">", extension_bytes=2_000)
    data = img.to_bytes()
    assert int.from_bytes(data[:4], "big") in (348, 540)
    vol = read_nifti(data)
    assert vol.array.dtype == np.dtype("=i2")
    np.testing.assert_array_equal(vol.array, np.asanyarray(nib.as_closest_canonical(img).dataobj))


def _with_vox_offset(data: bytes, offset: float) -> bytes:
    out = bytearray(data)
    out[108:112] = struct.pack("<f", offset)
    return bytes(out)


@pytest.mark.parametrize(
    ("offset", "code"),
    [
        (0.0, RejectReason.MALFORMED),  # unset: nibabel would read the header as voxels
        (float("nan"), RejectReason.MALFORMED),
        (352.5, RejectReason.MALFORMED),
        (float(MAX_HEADER_BYTES + 16), RejectReason.MALFORMED),
        (1_000_000.0, RejectReason.TRUNCATED),  # past the end of the file
    ],
)
def test_implausible_vox_offset_is_refused_with_its_reason(offset, code):
    img, _ = _image()
    with pytest.raises(IngestError) as err:
        read_nifti(_with_vox_offset(img.to_bytes(), offset))
    assert err.value.code == code
    assert "vox_offset" in err.value.message


def test_gzip_bomb_behind_a_large_extension_is_not_inflated():
    img, _ = _image(extension_bytes=100_000)
    raw = img.to_bytes()
    bomb = gzip.compress(raw + b"\0" * (200 << 20), compresslevel=1, mtime=0)
    tracemalloc.start()
    vol = read_nifti(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert vol.array.shape == (7, 5, 4)
    assert peak < 20 << 20  # the trailing 200 MB are never inflated


def test_pair_header_is_refused_as_unsupported():
    img, _ = _image()
    data = bytearray(img.to_bytes())
    data[344:348] = b"ni1\0"
    with pytest.raises(IngestError) as err:
        read_nifti(bytes(data))
    assert err.value.code == RejectReason.UNSUPPORTED


def _nibabel_niftis() -> list[str]:
    return sorted(p.name for p in NIBABEL_DATA.iterdir() if p.name.endswith((".nii", ".nii.gz")))


def test_nibabel_ships_the_nifti2_example():
    assert "example_nifti2.nii.gz" in _nibabel_niftis()


@pytest.mark.parametrize("name", _nibabel_niftis())
def test_every_nibabel_nifti_reads_with_nibabels_geometry_or_is_refused_for_a_reason(name):
    data = (NIBABEL_DATA / name).read_bytes()
    if name in NIBABEL_REFUSED:
        with pytest.raises(IngestError) as err:
            read_nifti(data)
        assert err.value.code == NIBABEL_REFUSED[name]
        return
    vol = read_nifti(data)
    original = nib.load(NIBABEL_DATA / name)
    ref = nib.as_closest_canonical(original)
    assert vol.array.shape == ref.shape
    assert vol.axcodes == "RAS"
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-4)
    np.testing.assert_allclose(vol.array, ref.get_fdata(dtype=np.float32), rtol=1e-5, atol=1e-3)
    assert vol.array.dtype != np.float64
    assert vol.meta["affine_source"] in ("sform", "qform", "pixdim")
    assert (vol.meta["qform_code"], vol.meta["sform_code"]) == (
        int(original.header["qform_code"]),
        int(original.header["sform_code"]),
    )
