"""dcm2niix, the reference for DICOM → NIfTI geometry, recovers the phantom's world geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from tests.tools.phantom_helpers import dcm2niix, inside_phantom, nifti_world_ras, phantom_at
from tools.phantom import (
    make_ct_phantom,
    write_ct_series,
    write_enhanced_multiframe,
    write_mosaic,
    write_mr_series,
)
from tools.phantom.demo_folder import oblique_orientation

# dcm2niix cannot read deflated files ("Unsupported transfer syntax"); pydicom tests cover them.
DCM2NIIX_SYNTAXES = [
    "ExplicitVRLittleEndian",
    "ImplicitVRLittleEndian",
    "ExplicitVRBigEndian",
    "RLELossless",
    "JPEG2000Lossless",
    "JPEGLSLossless",
    "JPEGLosslessSV1",
]


def _only_volume(paths):
    assert len(paths) == 1, f"expected one volume, dcm2niix wrote {[p.name for p in paths]}"
    return nib.load(paths[0])


def _assert_matches_phantom_exactly(img, phantom):
    canonical = nib.as_closest_canonical(img)
    np.testing.assert_allclose(canonical.affine, phantom.affine, atol=0.01)
    assert canonical.shape == phantom.shape
    assert np.abs(canonical.get_fdata() - phantom.image).max() <= 0.5 + 1e-3


def test_default_axial_ct_geometry_and_hu(tmp_path):
    phantom = make_ct_phantom(seed=21)  # 128 x 128 x 64, 3 x 3 x 4 mm
    write_ct_series(phantom, tmp_path / "in")
    _assert_matches_phantom_exactly(
        _only_volume(dcm2niix(tmp_path / "in", tmp_path / "out")), phantom
    )


@pytest.mark.parametrize("syntax", DCM2NIIX_SYNTAXES)
def test_axial_series_in_each_syntax(small_ct, tmp_path, syntax):
    write_ct_series(small_ct, tmp_path / "in", transfer_syntax=syntax)
    _assert_matches_phantom_exactly(
        _only_volume(dcm2niix(tmp_path / "in", tmp_path / "out")), small_ct
    )


@pytest.mark.parametrize("orientation", ["coronal", "sagittal"])
def test_orthogonal_reformats_land_on_the_same_grid(small_ct, tmp_path, orientation):
    write_ct_series(small_ct, tmp_path / "in", orientation=orientation)
    _assert_matches_phantom_exactly(
        _only_volume(dcm2niix(tmp_path / "in", tmp_path / "out")), small_ct
    )


@pytest.mark.parametrize("iop", [oblique_orientation(15.0, 20.0), oblique_orientation(-30.0, 0.0)])
def test_oblique_series_centre_and_content(small_ct, tmp_path, iop):
    write_ct_series(small_ct, tmp_path / "in", orientation=iop, transfer_syntax="JPEG2000Lossless")
    img = _only_volume(dcm2niix(tmp_path / "in", tmp_path / "out"))
    centre = img.affine @ np.append((np.array(img.shape[:3]) - 1) / 2.0, 1.0)
    np.testing.assert_allclose(centre[:3], small_ct.center_world, atol=0.01)
    world = nifti_world_ras(img)
    inside = inside_phantom(small_ct, world)
    assert inside.mean() > 0.5
    diff = np.abs(img.get_fdata() - phantom_at(small_ct, world))[inside]
    assert diff.max() <= 0.5 + 0.05


def test_mr_series_and_enhanced_multiframe(small_mr, small_ct, tmp_path):
    write_mr_series(small_mr, tmp_path / "mr", transfer_syntax="JPEGLSLossless")
    _assert_matches_phantom_exactly(
        _only_volume(dcm2niix(tmp_path / "mr", tmp_path / "mr_out")), small_mr
    )
    for phantom, name in ((small_mr, "emr"), (small_ct, "ect")):
        write_enhanced_multiframe(
            phantom, tmp_path / name / "mf.dcm", transfer_syntax="JPEGLosslessSV1"
        )
        img = _only_volume(dcm2niix(tmp_path / name, tmp_path / f"{name}_out"))
        _assert_matches_phantom_exactly(img, phantom)


@pytest.mark.parametrize(
    "orientation", ["axial", oblique_orientation(0.0, 20.0)], ids=["axial", "oblique"]
)
def test_siemens_mosaic(small_mr, tmp_path, orientation):
    write_mosaic(small_mr, tmp_path / "in" / "mosaic.dcm", orientation=orientation)
    img = _only_volume(dcm2niix(tmp_path / "in", tmp_path / "out"))
    if orientation == "axial":
        _assert_matches_phantom_exactly(img, small_mr)
    world = nifti_world_ras(img)
    inside = inside_phantom(small_mr, world)
    assert np.abs(img.get_fdata() - phantom_at(small_mr, world))[inside].max() <= 0.5 + 0.05


def test_positive_gantry_tilt_is_what_dcm2niix_corrects(small_ct, tmp_path):
    """dcm2niix reads the tilt from the slice vector and resamples it away (``*_Tilt_1.nii``)."""
    write_ct_series(small_ct, tmp_path / "in", gantry_tilt_deg=15.0)
    corrected = [p for p in dcm2niix(tmp_path / "in", tmp_path / "out") if "Tilt" in p.name]
    assert len(corrected) == 1
    img = nib.load(corrected[0])
    world = nifti_world_ras(img)
    inside = inside_phantom(small_ct, world)
    diff = np.abs(img.get_fdata() - phantom_at(small_ct, world))[inside]
    assert np.mean(diff) < 15.0  # interpolation across a sheared stack, not a misplacement
