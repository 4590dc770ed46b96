"""World geometry and voxel values equal dcm2niix's on real DICOM from packages."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from tests.io.geometry_reference import assert_same_geometry, dcm2niix_volumes, medssl_volumes

REAL = Path(__file__).resolve().parents[2] / "data" / "real" / "pydicom-data"


def _single(tmp_path: Path, src: str) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(src, folder / "a.dcm")
    return folder


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_single_slices_match_dcm2niix(tmp_path, name):
    folder = _single(tmp_path, get_testdata_file(name))
    (ours,) = medssl_volumes(folder)
    (ref,) = dcm2niix_volumes(folder, tmp_path / "ref")
    assert_same_geometry(ours, ref)


@pytest.mark.parametrize("series_dir", ["98892001/CT5N", "98892003/MR700", "98892003/MR2"])
def test_multi_slice_series_from_a_dicomdir_tree_matches_dcm2niix(tmp_path, series_dir):
    """The 5-slice CT series (and a 7-slice MR series) of pydicom's DICOMDIR test tree."""
    root = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"
    series = root / series_dir
    assert series.is_dir()
    folder = tmp_path / "in"
    shutil.copytree(series, folder)
    ours = medssl_volumes(folder)
    refs = dcm2niix_volumes(folder, tmp_path / "ref")
    assert len(refs) == len(ours)  # localizers: one volume per orientation, as dcm2niix splits them
    for ref in refs:
        same_shape = [v for v in ours if v.array.shape == ref.shape[:3]]
        match = min(same_shape, key=lambda v: float(np.abs(v.affine - ref.affine).max()))
        assert_same_geometry(match, ref)


@pytest.mark.skipif(not (REAL / "eCT_Supplemental.dcm").exists(), reason="run tools/fetch_real_data.sh for pydicom-data")
def test_enhanced_multiframe_ct_matches_dcm2niix(tmp_path):
    folder = _single(tmp_path, str(REAL / "eCT_Supplemental.dcm"))
    (ours,) = medssl_volumes(folder)
    (ref,) = dcm2niix_volumes(folder, tmp_path / "ref")
    assert_same_geometry(ours, ref)


def test_siemens_mosaic_geometry_matches_dcm2niix(tmp_path):
    """nibabel's real (cropped) Siemens mosaic: 48 slices tiled 7x7 into a 256x256 image.

    The crop leaves 256 not divisible by 7, so the tile *contents* are ambiguous (nibabel
    refuses the file); the geometry is not, and must match dcm2niix's.
    """
    import nibabel.nicom.tests as nicom_tests

    folder = _single(tmp_path, str(Path(nicom_tests.__file__).parent / "data" / "0.dcm"))
    (ours,) = medssl_volumes(folder)
    (ref,) = dcm2niix_volumes(folder, tmp_path / "ref")
    assert_same_geometry(ours, ref, values=False)
