"""Phantom series that behave like scanners: the writer keeps its promises (pydicom only).

What a reader must cope with (tests/store/test_scanner_like_phantoms.py checks ingest):
DS-rounded geometry, zero bytes after Pixel Data, over-long private values, localizers.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.tools.phantom_helpers import folder_digest, read_series
from tools.phantom import (
    LOCALIZER_IMAGE_TYPE,
    make_ct_phantom,
    make_slice_grid,
    write_ct_series,
    write_mr_series,
)
from tools.phantom.scanner_quirks import (
    JITTER_MM,
    LONG_PRIVATE_VALUE,
    PRIVATE_CREATOR,
)

# 20 degrees about the left-right axis, then 10 about head-feet: a double-oblique plane
_A, _B = np.deg2rad(20.0), np.deg2rad(10.0)
_ROT = np.array([[np.cos(_B), -np.sin(_B), 0], [np.sin(_B), np.cos(_B), 0], [0, 0, 1]]) @ np.array(
    [[1, 0, 0], [0, np.cos(_A), -np.sin(_A)], [0, np.sin(_A), np.cos(_A)]]
)
DOUBLE_OBLIQUE = tuple(float(v) for v in (*_ROT[:, 0], *_ROT[:, 1]))


def _private_vr_value(path: Path) -> tuple[str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom flags the over-long value: the point
        ds = pydicom.dcmread(path)
        element = ds.private_block(0x0019, PRIVATE_CREATOR)[0x0F]
        return element.VR, element.value


@pytest.fixture(scope="module")
def rounded(small_ct, tmp_path_factory):
    out = tmp_path_factory.mktemp("rounded")
    return write_ct_series(small_ct, out, orientation=DOUBLE_OBLIQUE, ds_rounding=True, seed=4)


def test_ds_rounding_writes_scanner_length_strings(rounded):
    for ds in read_series(rounded):
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            assert all(len(str(v)) <= 16 for v in ds[keyword].value), keyword
        assert len(str(ds.SliceThickness)) <= 16
        # six significant digits at most, as GE and Siemens write cosines
        for v in ds.ImageOrientationPatient:
            assert len(str(v).lstrip("-").replace("0.", "", 1).lstrip("0")) <= 6, str(v)


def test_rounded_cosines_are_no_longer_exactly_orthonormal(rounded):
    iop = np.array(read_series(rounded)[0].ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]
    off = max(abs(np.dot(row, col)), abs(np.linalg.norm(row) - 1), abs(np.linalg.norm(col) - 1))
    assert 0 < off < 1e-5


def test_slice_origins_jitter_in_plane_below_a_tenth_of_a_mm(small_ct, rounded):
    grid = make_slice_grid(small_ct, DOUBLE_OBLIQUE)
    written = np.array([ds.ImagePositionPatient for ds in read_series(rounded)], float)
    offset = written - grid.positions
    along_normal = offset @ grid.normal
    in_plane = np.linalg.norm(offset - along_normal[:, None] * grid.normal, axis=1)
    assert np.abs(along_normal).max() < 1e-6
    assert in_plane.max() <= JITTER_MM + 1e-6 and in_plane.max() > JITTER_MM / 10
    pairwise = np.linalg.norm(offset[:, None] - offset[None], axis=-1)
    assert pairwise.max() < 0.1


def test_scanner_like_series_are_deterministic_and_defaults_unchanged(small_ct, tmp_path):
    options = {"ds_rounding": True, "pad_after_pixels": 5, "long_private_value": True}
    write_ct_series(small_ct, tmp_path / "a", orientation=DOUBLE_OBLIQUE, seed=4, **options)
    write_ct_series(small_ct, tmp_path / "b", orientation=DOUBLE_OBLIQUE, seed=4, **options)
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b")
    write_ct_series(small_ct, tmp_path / "c", seed=4)
    off = {"ds_rounding": False, "pad_after_pixels": 0, "long_private_value": False}
    write_ct_series(small_ct, tmp_path / "d", seed=4, localizer=False, **off)
    assert folder_digest(tmp_path / "c") == folder_digest(tmp_path / "d")


@pytest.mark.parametrize("n_bytes", [1, 8, 255])
def test_pad_after_pixels_appends_zeros_to_every_other_file(small_ct, tmp_path, n_bytes):
    plain = write_ct_series(small_ct, tmp_path / "plain", seed=2, file_names="instance")
    padded = write_ct_series(
        small_ct, tmp_path / "padded", seed=2, file_names="instance", pad_after_pixels=n_bytes
    )
    for index, (a, b) in enumerate(zip(plain, padded)):
        extra = b.stat().st_size - a.stat().st_size
        assert extra == (n_bytes if index % 2 == 0 else 0)
        assert b.read_bytes()[: a.stat().st_size] == a.read_bytes()
        if extra:
            assert b.read_bytes()[-n_bytes:] == b"\0" * n_bytes


def test_long_private_value_is_written_raw_in_a_siemens_block(small_ct, tmp_path):
    paths = write_ct_series(small_ct, tmp_path, seed=2, long_private_value=True)
    raw = paths[0].read_bytes()
    assert b"\x19\x00\x10\x00LO" in raw and PRIVATE_CREATOR.encode() in raw
    assert len(LONG_PRIVATE_VALUE) == 21
    assert b"SH\x16\x00" + LONG_PRIVATE_VALUE.encode() + b" " in raw  # explicit VR SH, 22 bytes
    assert _private_vr_value(paths[0]) == ("SH", LONG_PRIVATE_VALUE)


def test_ct_scout_reproduces_the_512_by_400_localizer_of_1_mm(tmp_path):
    phantom = make_ct_phantom((128, 96, 100), (4.0, 4.0, 4.0), seed=0, n_lesions=0)
    (path,) = write_ct_series(phantom, tmp_path, localizer=True)
    ds = pydicom.dcmread(path)
    assert list(ds.ImageType) == LOCALIZER_IMAGE_TYPE and ds.Modality == "CT"
    assert (ds.Rows, ds.Columns) == (400, 512)
    assert [float(v) for v in ds.PixelSpacing] == [1.0, 1.0]
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]  # coronal
    # the top-left pixel is the phantom's right-superior corner, in its centre coronal plane
    centre = phantom.center_world
    ipp_ras = np.array(ds.ImagePositionPatient, float) * [-1, -1, 1]
    expected = [centre[0] + 255.5, centre[1], centre[2] + 199.5]
    np.testing.assert_allclose(ipp_ras, expected, atol=1e-6)
    pixels = ds.pixel_array
    assert pixels[200, 256] > pixels[200, 5]  # through the body attenuates more than beside it


def test_mr_three_plane_localizer_is_one_series_of_three_single_images(small_mr, tmp_path):
    paths = write_mr_series(small_mr, tmp_path, localizer=True)
    datasets = [pydicom.dcmread(p) for p in paths]
    assert len(datasets) == 3 and len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert all(list(ds.ImageType) == LOCALIZER_IMAGE_TYPE for ds in datasets)
    iops = [np.array(ds.ImageOrientationPatient, float) for ds in datasets]
    normals = [np.cross(iop[:3], iop[3:]) for iop in iops]
    assert np.allclose(np.abs(normals), np.eye(3)[[2, 0, 1]])  # axial, sagittal, coronal
    for ds, orientation in zip(datasets, ("axial", "sagittal", "coronal")):
        grid = make_slice_grid(small_mr, orientation)
        np.testing.assert_allclose(ds.ImagePositionPatient, grid.positions[grid.n_slices // 2])
        assert ds.pixel_array.max() > 0
