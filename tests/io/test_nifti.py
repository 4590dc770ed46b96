"""NIfTI/NRRD readers: true geometry in RAS+, and header bombs refused before allocation."""

from __future__ import annotations

import gzip
import io
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from medssl.errors import IngestError
from medssl.io.nifti import read_nifti, read_nrrd
from medssl.types import RejectReason


def _nifti_bytes(array, affine, gz=False) -> bytes:
    img = nib.Nifti1Image(array, affine)
    raw = img.to_bytes()
    return gzip.compress(raw) if gz else raw


def _las_affine():
    aff = np.diag([-0.7, 0.7, 2.5, 1.0])
    aff[:3, 3] = [100.0, -50.0, 20.0]
    return aff


@pytest.mark.parametrize("gz", [False, True])
def test_las_volume_comes_back_in_ras_order_with_the_same_world_geometry(gz):
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, size=(8, 6, 4)).astype(np.int16)
    aff = _las_affine()
    vol = read_nifti(_nifti_bytes(array, aff, gz))
    assert vol.axcodes == "RAS"
    # the voxel that was at index (0, 0, 0) is now at (7, 0, 0) and sits at the same world point
    assert vol.array[7, 0, 0] == array[0, 0, 0]
    np.testing.assert_allclose(vol.affine @ [7, 0, 0, 1], aff @ [0, 0, 0, 1])
    np.testing.assert_allclose(vol.spacing, (0.7, 0.7, 2.5))


def test_oblique_affine_is_preserved_exactly_up_to_axis_permutation():
    theta = np.deg2rad(20)
    rot = np.array([[np.cos(theta), 0, np.sin(theta)], [0, 1, 0], [-np.sin(theta), 0, np.cos(theta)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.0, 1.5, 2.0])
    array = np.arange(5 * 4 * 3, dtype=np.float32).reshape(5, 4, 3)
    vol = read_nifti(_nifti_bytes(array, aff))
    corners = [(i, j, k) for i in (0, 4) for j in (0, 3) for k in (0, 2)]
    world_in = {tuple(np.round(aff @ [*c, 1], 6)[:3]): array[c] for c in corners}
    for idx in np.ndindex(vol.array.shape):
        w = tuple(np.round(vol.affine @ [*idx, 1], 6)[:3])
        if w in world_in:
            assert vol.array[idx] == world_in[w]


def test_scaled_nifti_returns_real_values():
    img = nib.Nifti1Image(np.array([[[0, 10]]], dtype=np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    vol = read_nifti(img.to_bytes())
    assert sorted(vol.array.ravel().tolist()) == [-1024.0, -1004.0]


def test_header_bomb_is_refused_without_allocating():
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape((30000, 30000, 30000))
    data = hdr.binaryblock + b"\0" * 4 + b"\0" * 64
    tracemalloc.start()
    with pytest.raises(IngestError) as err:
        read_nifti(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert err.value.code == RejectReason.TOO_LARGE
    assert peak < 50 << 20


@pytest.mark.parametrize("cut", [10, 200, 347, 352, 400, 1000])
def test_truncated_nifti_is_refused(cut):
    data = _nifti_bytes(np.ones((10, 10, 10), np.int16), np.eye(4))
    with pytest.raises(IngestError) as err:
        read_nifti(data[:cut])
    assert err.value.code in (RejectReason.TRUNCATED, RejectReason.MALFORMED)


def test_truncated_gzip_nifti_is_refused():
    data = _nifti_bytes(np.random.default_rng(1).random((20, 20, 20)).astype(np.float32), np.eye(4), gz=True)
    with pytest.raises(IngestError) as err:
        read_nifti(data[: len(data) // 2])
    assert err.value.code == RejectReason.TRUNCATED


def test_nan_voxels_and_singular_affines_are_refused():
    arr = np.ones((4, 4, 4), np.float32)
    arr[1, 1, 1] = np.nan
    with pytest.raises(IngestError) as err:
        read_nifti(_nifti_bytes(arr, np.eye(4)))
    assert err.value.code == RejectReason.MALFORMED
    singular = np.eye(4)
    singular[2, 2] = 0
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), None)
    img.header.set_sform(singular, code=1)
    with pytest.raises(IngestError) as err:
        read_nifti(img.to_bytes())
    assert err.value.code == RejectReason.GEOMETRY


def _nrrd_bytes(array, header) -> bytes:
    import nrrd

    buf = io.BytesIO()
    nrrd.write(buf, array, header, index_order="F")
    return buf.getvalue()


def test_nrrd_in_lps_space_is_converted_to_ras():
    array = np.arange(24, dtype=np.int16).reshape(4, 3, 2)
    header = {"space": "left-posterior-superior", "space directions": np.diag([0.5, 0.6, 3.0]), "space origin": np.array([10.0, 20.0, 30.0])}
    vol = read_nrrd(_nrrd_bytes(array, header))
    assert vol.axcodes == "RAS"
    # LPS origin (10, 20, 30) is RAS (-10, -20, 30); the voxel stored first is there
    first_world = np.array([-10.0, -20.0, 30.0, 1.0])
    idx = np.round(np.linalg.solve(vol.affine, first_world)).astype(int)[:3]
    assert vol.array[tuple(idx)] == array[0, 0, 0]


def test_nrrd_header_bomb_and_detached_data_are_refused():
    bomb = b"NRRD0004\ntype: float\ndimension: 3\nsizes: 40000 40000 40000\nspace: left-posterior-superior\nspace directions: (1,0,0) (0,1,0) (0,0,1)\nencoding: raw\n\n"
    with pytest.raises(IngestError) as err:
        read_nrrd(bomb + b"\0" * 16)
    assert err.value.code == RejectReason.TOO_LARGE
    detached = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\ndata file: ../../../etc/passwd\nencoding: raw\n\n"
    with pytest.raises(IngestError) as err:
        read_nrrd(detached)
    assert err.value.code in (RejectReason.UNSUPPORTED, RejectReason.MALFORMED)


def test_real_nibabel_example_reads_with_its_geometry():
    from nibabel.testing import data_path

    path = f"{data_path}/example4d.nii.gz"
    with open(path, "rb") as f:
        vol = read_nifti(f.read())
    ref = nib.as_closest_canonical(nib.load(path))
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-4)
    assert vol.array.shape == ref.shape


# -- one dtype rule for DICOM and NIfTI: integral -> smallest exact integer, else float32 -------


def _scaled_int16(values, slope: float, inter: float) -> bytes:
    img = nib.Nifti1Image(np.asarray(values, dtype=np.int16).reshape(1, 1, -1), np.eye(4))
    img.header.set_slope_inter(slope, inter)
    return img.to_bytes()


def test_int16_with_a_fractional_slope_is_float32_not_float64():
    vol = read_nifti(_scaled_int16([1, 3, -7, 2001], 0.5, 0.0))
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(np.sort(vol.array.ravel()), [-3.5, 0.5, 1.5, 1000.5])


def test_int16_with_slope_one_and_an_integer_intercept_stays_an_integer_type():
    vol = read_nifti(_scaled_int16([0, 1024, 3000, 4095], 1.0, -1024.0))
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(np.sort(vol.array.ravel()), [-1024, 0, 1976, 3071])


def test_integral_scaling_beyond_int16_takes_the_next_exact_type():
    vol = read_nifti(_scaled_int16([-32768, 32767], 2.0, 0.0))
    assert vol.array.dtype == np.int32
    assert sorted(vol.array.ravel().tolist()) == [-65536, 65534]


def test_big_endian_scaled_data_come_back_native_and_exact():
    header = nib.Nifti1Header(endianness=">")
    header.set_data_dtype(np.int16)
    img = nib.Nifti1Image(np.array([[[1, 2, 3]]], dtype=np.int16), np.eye(4), header=header)
    img.header.set_slope_inter(0.25, 10.0)
    data = img.to_bytes()
    assert int.from_bytes(data[:4], "big") == 348
    vol = read_nifti(data)
    assert vol.array.dtype == np.dtype("=f4")
    assert sorted(vol.array.ravel().tolist()) == [10.25, 10.5, 10.75]


# -- qform / sform: which codes the file had, which affine was used, and disagreement ----------


def _coded(qform, qcode: int, sform, scode: int) -> bytes:
    img = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), None)
    img.header.set_qform(qform, code=qcode)
    img.header.set_sform(sform, code=scode)
    return img.to_bytes()


def test_codes_are_reported_and_sform_wins_when_both_agree():
    aff = _las_affine()
    vol = read_nifti(_coded(aff, 1, aff, 4))
    assert vol.meta == {**vol.meta, "qform_code": 1, "sform_code": 4, "affine_source": "sform", "affine_code": 4}
    assert not [c for c in vol.corrections if c.startswith("qform_sform_differ")]


def test_qform_only_is_used_with_its_code():
    aff = _las_affine()
    vol = read_nifti(_coded(aff, 2, np.eye(4), 0))
    assert (vol.meta["affine_source"], vol.meta["affine_code"], vol.meta["sform_code"]) == ("qform", 2, 0)
    np.testing.assert_allclose(vol.affine @ [5, 0, 0, 1], aff @ [0, 0, 0, 1], atol=1e-5)


def test_disagreeing_qform_and_sform_use_the_sform_and_say_by_how_much():
    sform = _las_affine()
    qform = sform.copy()
    qform[:3, 3] += [0.0, 1.5, 0.0]  # 1.5 mm apart everywhere
    vol = read_nifti(_coded(qform, 1, sform, 1))
    assert vol.meta["affine_source"] == "sform"
    assert "qform_sform_differ:used_sform:1.5mm" in vol.corrections
    np.testing.assert_allclose(vol.affine @ [5, 0, 0, 1], sform @ [0, 0, 0, 1], atol=1e-5)


def test_qform_sform_below_a_hundredth_of_a_mm_is_agreement():
    sform = _las_affine()
    qform = sform.copy()
    qform[0, 3] += 0.004
    vol = read_nifti(_coded(qform, 1, sform, 1))
    assert not [c for c in vol.corrections if c.startswith("qform_sform_differ")]


def test_no_codes_fall_back_to_pixdim_and_say_so():
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.uint8), None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    vol = read_nifti(img.to_bytes())
    assert (vol.meta["affine_source"], vol.meta["affine_code"]) == ("pixdim", 0)
    assert "no_qform_sform:pixdim_affine" in vol.corrections


# -- 4D --------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_4d_las_series_comes_back_ras_with_time_untouched_and_round_trips(gz):
    from medssl.io.volume import nifti_gz_bytes

    rng = np.random.default_rng(5)
    array = rng.integers(0, 4000, size=(6, 5, 4, 3)).astype(np.int16)
    vol = read_nifti(_nifti_bytes(array, _las_affine(), gz))
    assert vol.array.shape == (6, 5, 4, 3) and vol.axcodes == "RAS"
    for t in range(3):  # each time point is its own 3D volume, flipped along x only
        np.testing.assert_array_equal(vol.array[..., t], array[::-1, :, :, t])
    np.testing.assert_allclose(vol.spacing, (0.7, 0.7, 2.5))
    again = read_nifti(nifti_gz_bytes(vol))
    np.testing.assert_array_equal(again.array, vol.array)
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-5)


def test_4d_with_one_volume_is_3d_and_5d_is_refused():
    vol = read_nifti(_nifti_bytes(np.ones((4, 3, 2, 1), np.int16), np.eye(4)))
    assert vol.array.shape == (4, 3, 2)
    with pytest.raises(IngestError) as err:
        read_nifti(_nifti_bytes(np.ones((4, 3, 2, 1, 3), np.float32), np.eye(4)))
    assert err.value.code == RejectReason.UNSUPPORTED
