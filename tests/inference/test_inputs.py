"""read_input: the ingest readers behind one upload; every refusal an InputError with a code."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from medssl.inference.inputs import Grid, read_input
from medssl.inference.predictor import InputError
from tests.inference.artifact_builders import (
    CANARY_ID,
    CANARY_NAME,
    phantom_series,
    write_lps_nifti,
)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[Path]:
    return phantom_series(tmp_path_factory.mktemp("series"))


def _refused(paths, code: str) -> InputError:
    with pytest.raises(InputError) as info:
        read_input(paths)
    assert info.value.code == code, str(info.value)
    text = str(info.value)
    assert CANARY_NAME not in text and CANARY_ID not in text
    assert not any(p.name in text for p in paths if isinstance(p, Path) and len(p.name) > 6)
    return info.value


def test_dicom_folder_gives_the_canonical_volume_and_its_headers(series):
    inp = read_input([series[0].parent])
    assert inp.kind == "dicom" and inp.is_dicom and inp.modality == "CT"
    assert inp.volume.array.shape == (48, 48, 20) and inp.volume.axcodes == "RAS"
    assert np.allclose(inp.volume.spacing, (4.0, 4.0, 6.0))
    assert inp.n_images == 20 and len(inp.source_datasets) == 20
    assert all("PixelData" not in ds for ds in inp.source_datasets)  # headers only, in memory
    positions = [float(ds.ImagePositionPatient[2]) for ds in inp.source_datasets]
    assert positions == sorted(positions)  # stack order, not file order


def test_files_and_zip_give_the_same_volume_as_the_folder(series, tmp_path):
    folder = read_input([series[0].parent]).volume
    files = read_input(list(reversed(series))).volume
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, path in enumerate(series):
            zf.write(path, f"dir/{i}")
    zipped = read_input([archive]).volume
    for other in (files, zipped):
        assert np.array_equal(other.array, folder.array)
        assert np.allclose(other.affine, folder.affine)


def test_lps_nifti_reads_back_onto_the_same_ras_grid(series, tmp_path):
    dicom = read_input([series[0].parent]).volume
    path = write_lps_nifti(np.asarray(dicom.array), dicom.affine, tmp_path / "v.nii.gz")
    inp = read_input([path])
    assert inp.kind == "nifti" and inp.modality is None and inp.source_datasets is None
    assert np.array_equal(inp.volume.array, dicom.array)
    assert np.allclose(inp.volume.affine, dicom.affine)


def test_two_series_are_refused(series, tmp_path):
    other = phantom_series(tmp_path / "second", series_number=2,
                           series_uid="1.2.826.0.1.3680043.8.498.77")
    err = _refused([series[0].parent, tmp_path / "second"], "unsupported")
    assert "holds 2 image series; send one" in str(err)
    assert other


def test_garbage_file_is_not_an_image(tmp_path):
    path = tmp_path / "garbage.bin"
    path.write_bytes(b"\x00garbage" * 100)
    _refused([path], "not_an_image")


def test_truncated_dicom_is_refused(series, tmp_path):
    cut = tmp_path / "cut"
    cut.mkdir()
    for path in series:
        (cut / path.name).write_bytes(path.read_bytes())
    victim = cut / series[5].name
    victim.write_bytes(victim.read_bytes()[:-700])
    _refused([cut], "truncated")


def test_truncated_nifti_is_refused(series, tmp_path):
    dicom = read_input([series[0].parent]).volume
    path = write_lps_nifti(np.asarray(dicom.array), dicom.affine, tmp_path / "v.nii")
    path.write_bytes(path.read_bytes()[:2000])
    _refused([path], "truncated")


def test_nifti_among_dicom_files_is_refused(series, tmp_path):
    dicom = read_input([series[0].parent]).volume
    path = write_lps_nifti(np.asarray(dicom.array), dicom.affine, tmp_path / "v.nii")
    err = _refused([path, *series[:3]], "unsupported")
    assert "send one NIfTI/NRRD file alone" in str(err)


def test_unsafe_zip_member_and_missing_input_are_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../escape.dcm", b"x" * 200)
    _refused([archive], "bad_archive")
    _refused([tmp_path / "missing"], "not_an_image")
    with pytest.raises(InputError):
        read_input([])


def test_irregular_stack_is_refused_unless_allowed(tmp_path):
    from tools.phantom import make_ct_phantom, write_ct_series

    phantom = make_ct_phantom((32, 32, 12), (4.0, 4.0, 6.0), n_lesions=0)
    write_ct_series(phantom, tmp_path / "gap", missing_slices=[5])
    _refused([tmp_path / "gap"], "missing_slices")
    inp = read_input([tmp_path / "gap"], allow_irregular=True)
    assert inp.volume.array.shape == (32, 32, 12)


def test_grid_maps_model_voxel_edges_to_world_mm():
    affine = np.array([[-2.0, 0, 0, 10], [0, 2.0, 0, -5], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    grid = Grid(affine, input_shape=(10, 20, 30), shape=(5, 10, 16), valid=(5, 10, 15))
    corners = grid.to_world(np.array([[0.0, 0.0, 0.0], [5.0, 10.0, 15.0], [9.0, 99.0, -3.0]]))
    first = affine[:3, :3] @ np.full(3, -0.5) + affine[:3, 3]  # outer edge of voxel 0
    last = affine[:3, :3] @ (np.array([10, 20, 30]) - 0.5) + affine[:3, 3]
    assert np.allclose(corners[0], first) and np.allclose(corners[1], last)
    assert np.allclose(corners[2], [last[0], last[1], first[2]])  # clipped to the valid part


def test_a_4d_series_is_refused_with_its_frame_count(tmp_path):
    """predict reads one 3D volume: a time series (DICOM or NIfTI) says so instead of guessing."""
    import nibabel as nib

    from tests.io.test_dicom_4d import time_series
    from tests.store import dicom_factory as f

    datasets, _ = time_series()
    f.write(datasets, tmp_path / "series")
    err = _refused([tmp_path / "series"], "unsupported")
    assert "4D series of 3 frames" in str(err)
    path = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.int16), np.eye(4)), path)
    assert "4D series of 2 frames" in str(_refused([path], "unsupported"))
