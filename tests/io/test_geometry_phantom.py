"""World geometry against dcm2niix on generated series with every layout a hospital sends.

Geometry is compared with both volumes in RAS+ voxel order (dcm2niix's output through
nibabel.as_closest_canonical): affines within 0.01 mm, voxel values equal (CT in HU).
Where dcm2niix does not resample (missing slices) the phantom's own truth is the reference.
"""

from __future__ import annotations


import nibabel as nib
import numpy as np
import pytest

from medssl.io.dicom_scan import scan_file
from medssl.io.dicom_stack import build_stacks
from medssl.io.dicom_volume import read_stack
from medssl.io.sources import iter_source_items
from medssl.types import RejectReason
from tests.io.geometry_reference import assert_same_geometry, dcm2niix_volumes, medssl_volumes
from tools.phantom import (
    make_ct_phantom,
    make_mr_phantom,
    write_ct_series,
    write_enhanced_multiframe,
    write_mosaic,
    write_mr_series,
)

SHAPE, SPACING = (48, 40, 24), (4.0, 4.5, 5.0)


@pytest.fixture(scope="module")
def ct():
    return make_ct_phantom(SHAPE, SPACING, seed=11, n_lesions=2)


@pytest.fixture(scope="module")
def mr():
    return make_mr_phantom(SHAPE, SPACING, seed=12, n_lesions=2)


@pytest.mark.parametrize(
    "syntax", ["ExplicitVRLittleEndian", "ImplicitVRLittleEndian", "ExplicitVRBigEndian", "RLELossless", "JPEG2000Lossless", "JPEGLSLossless", "JPEGLosslessSV1"]
)
def test_axial_ct_in_every_transfer_syntax_matches_dcm2niix_and_the_phantom(tmp_path, ct, syntax):
    write_ct_series(ct, tmp_path / "in", transfer_syntax=syntax, seed=1)
    (ours,) = medssl_volumes(tmp_path / "in")
    (ref,) = dcm2niix_volumes(tmp_path / "in", tmp_path / "ref")
    assert_same_geometry(ours, ref)
    np.testing.assert_allclose(ours.affine, ct.affine, atol=0.01)
    assert np.abs(ours.array - ct.image).max() <= 0.5  # HU, quantised by the 12-bit store


@pytest.mark.parametrize("orientation", ["coronal", "sagittal", [0.9659258, 0.258819, 0.0, -0.0449435, 0.1677312, -0.9848078]])
def test_coronal_sagittal_and_oblique_series_match_dcm2niix(tmp_path, mr, orientation):
    write_mr_series(mr, tmp_path / "in", orientation=orientation, seed=2)
    (ours,) = medssl_volumes(tmp_path / "in")
    (ref,) = dcm2niix_volumes(tmp_path / "in", tmp_path / "ref")
    assert_same_geometry(ours, ref)


def test_several_series_in_one_folder_become_one_volume_each(tmp_path, ct, mr):
    write_ct_series(ct, tmp_path / "in", series_number=1, seed=3)
    write_ct_series(ct, tmp_path / "in", series_number=2, orientation="coronal", seed=4)
    write_mr_series(mr, tmp_path / "in", series_number=3, patient_id="OTHER", seed=5)
    ours = medssl_volumes(tmp_path / "in")
    refs = dcm2niix_volumes(tmp_path / "in", tmp_path / "ref")
    assert len(ours) == len(refs) == 3
    for ref in refs:
        same_grid = [v for v in ours if v.array.shape == ref.shape and np.allclose(v.affine, ref.affine, atol=0.01)]
        match = min(same_grid, key=lambda v: float(np.abs(v.array - ref.get_fdata()).mean()))  # CT vs MR on one grid
        assert_same_geometry(match, ref)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_enhanced_multiframe_matches_dcm2niix(tmp_path, ct, mr, modality):
    phantom = ct if modality == "CT" else mr
    write_enhanced_multiframe(phantom, tmp_path / "in" / "mf.dcm", seed=6)
    (ours,) = medssl_volumes(tmp_path / "in")
    (ref,) = dcm2niix_volumes(tmp_path / "in", tmp_path / "ref")
    assert_same_geometry(ours, ref)


def test_enhanced_multiframe_with_shuffled_frames_is_sorted_by_position(tmp_path, mr):
    """dcm2niix trusts frame order here and gets it wrong; medssl sorts along the normal."""
    write_enhanced_multiframe(mr, tmp_path / "in" / "mf.dcm", shuffle_frames=True, seed=7)
    (ours,) = medssl_volumes(tmp_path / "in")
    np.testing.assert_allclose(ours.affine, mr.affine, atol=0.01)
    assert np.abs(ours.array - np.round(mr.image)).max() <= 1


def test_siemens_mosaic_matches_dcm2niix(tmp_path, mr):
    write_mosaic(mr, tmp_path / "in" / "bold.dcm", seed=8)
    (ours,) = medssl_volumes(tmp_path / "in")
    (ref,) = dcm2niix_volumes(tmp_path / "in", tmp_path / "ref")
    assert_same_geometry(ours, ref)


def test_gantry_tilt_is_rejected_or_unsheared_to_dcm2niix_geometry(tmp_path, ct):
    write_ct_series(ct, tmp_path / "in", gantry_tilt_deg=15.0, seed=9)
    records = []
    for item in iter_source_items(tmp_path / "in"):
        records += scan_file(item, item.read_bytes())
    (stack,), _ = build_stacks(records)
    assert stack.irregularity == RejectReason.GANTRY_TILT
    assert stack.tilt_deg == pytest.approx(15.0, abs=0.01)
    ours, _ = read_stack(stack, lambda it: it.read_bytes())
    assert ours.corrections and ours.corrections[0].startswith("gantry_tilt_corrected")
    dcm2niix_volumes(tmp_path / "in", tmp_path / "ref")
    tilt_corrected = [nib.as_closest_canonical(nib.load(p)) for p in (tmp_path / "ref").glob("*_Tilt_1.nii")]
    assert tilt_corrected, "dcm2niix writes its tilt-corrected volume as *_Tilt_1.nii"
    ref = tilt_corrected[0]
    # dcm2niix widens the field of view to keep the sheared edge; medssl keeps the acquired
    # grid. Same axes and spacing, and our grid sits on theirs at a whole-voxel offset:
    np.testing.assert_allclose(ours.affine[:3, :3], ref.affine[:3, :3], atol=1e-3)
    offset = np.linalg.solve(ref.affine, ours.affine[:, 3])[:3]
    np.testing.assert_allclose(offset, np.round(offset), atol=0.01 / min(SPACING))
    i, j, k = np.round(offset).astype(int)
    theirs = ref.get_fdata()[i : i + SHAPE[0], j : j + SHAPE[1], k : k + SHAPE[2]]
    assert theirs.shape == ours.array.shape
    agree = np.abs(ours.array - theirs) < 40  # both interpolate linearly; HU agree off the edges
    assert agree.mean() > 0.9


def test_missing_slice_is_interpolated_back_onto_the_true_grid(tmp_path, ct):
    write_ct_series(ct, tmp_path / "in", missing_slices=(10,), seed=10)
    records = []
    for item in iter_source_items(tmp_path / "in"):
        records += scan_file(item, item.read_bytes())
    (stack,), _ = build_stacks(records)
    assert stack.irregularity == RejectReason.MISSING_SLICES
    ours, _ = read_stack(stack, lambda it: it.read_bytes())
    assert ours.array.shape == ct.image.shape
    np.testing.assert_allclose(ours.affine, ct.affine, atol=0.01)
    kept = [k for k in range(SHAPE[2]) if k != 10]
    assert np.abs(ours.array[..., kept] - ct.image[..., kept]).max() <= 0.5
    expected = (ct.image[..., 9] + ct.image[..., 11]) / 2
    assert np.abs(ours.array[..., 10] - expected).max() <= 1.0


def test_duplicate_slices_with_different_pixels_are_refused(tmp_path, ct):
    write_ct_series(ct, tmp_path / "in", duplicate_slices=(5,), seed=13)
    records = []
    for item in iter_source_items(tmp_path / "in"):
        records += scan_file(item, item.read_bytes())
    stacks, failed = build_stacks(records)
    # the phantom writes the duplicate with the same pixels and a new SOP UID: still two images at one place
    assert not stacks and failed[0][1].code == RejectReason.DUPLICATE_SLICES


