"""Spec (issue 11, part 5): NIfTI files as tools write them land in the store.

Header extensions of any size and NIfTI-2 are read; 4D series are stored as 4D; scaled
integers follow the one dtype rule (float32, or the smallest exact integer type); a qform
and sform that disagree are recorded as a correction, the sform being the one used.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.testing import data_path

from tests.store import store_view as sv
from tests.store.ingest_run import run, single_volume


def _affine() -> np.ndarray:
    aff = np.diag([-1.5, 1.5, 3.0, 1.0])
    aff[:3, 3] = [60.0, -40.0, -20.0]
    return aff


def _save(img, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = img.to_bytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if path.name.endswith(".gz") else raw)


def test_nifti1_with_a_large_extension_and_the_nifti2_example_are_stored(tmp_path):
    img = nib.Nifti1Image(np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4), _affine())
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"x" * 100_000))
    _save(img, tmp_path / "src" / "ext.nii.gz")
    shutil.copy(Path(data_path) / "example_nifti2.nii.gz", tmp_path / "src" / "two.nii.gz")
    summary = run(tmp_path / "src", tmp_path / "store")
    assert sv.rejected(tmp_path / "store") == []
    assert summary.written == 2
    shapes = sorted(json.loads(r["shape"]) for r in sv.volumes(tmp_path / "store"))
    assert shapes == [[6, 5, 4], [32, 20, 12, 2]]


def test_4d_nifti_is_stored_as_4d_with_every_frame(tmp_path):
    series = np.random.default_rng(2).integers(0, 1000, size=(6, 5, 4, 3)).astype(np.int16)
    _save(nib.Nifti1Image(series, _affine()), tmp_path / "src" / "bold.nii.gz")
    run(tmp_path / "src", tmp_path / "store")
    row = single_volume(tmp_path / "store")
    assert (row["ndim"], json.loads(row["shape"])) == (4, [6, 5, 4, 3])
    stored = nib.load(tmp_path / "store" / row["path"])
    assert nib.aff2axcodes(stored.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), series[::-1])


def test_scaled_int16_is_stored_as_float32_or_an_exact_integer_type(tmp_path):
    values = np.array([1, 3, 5, 2001], dtype=np.int16).reshape(1, 2, 2)
    half = nib.Nifti1Image(values, _affine())
    half.header.set_slope_inter(0.5, 0.0)
    shifted = nib.Nifti1Image(values, _affine())
    shifted.header.set_slope_inter(1.0, -1024.0)
    _save(half, tmp_path / "half" / "half.nii")
    _save(shifted, tmp_path / "shifted" / "shifted.nii")
    run(tmp_path / "half", tmp_path / "store_half")
    run(tmp_path / "shifted", tmp_path / "store_shifted")
    for name, dtype in (("half", "float32"), ("shifted", "int16")):
        store = tmp_path / f"store_{name}"
        row = single_volume(store)
        assert row["dtype"] == dtype, name
        assert nib.load(store / row["path"]).get_data_dtype() == np.dtype(dtype)


def test_disagreeing_qform_and_sform_are_recorded_and_the_sform_used(tmp_path):
    sform = _affine()
    qform = sform.copy()
    qform[:3, 3] += [2.0, 0.0, 0.0]
    img = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), None)
    img.header.set_qform(qform, code=1)
    img.header.set_sform(sform, code=2)
    _save(img, tmp_path / "src" / "both.nii.gz")
    run(tmp_path / "src", tmp_path / "store")
    row = single_volume(tmp_path / "store")
    assert "qform_sform_differ:used_sform:2mm" in json.loads(row["corrections"])
    affine = np.array(json.loads(row["affine"]))
    np.testing.assert_allclose(affine @ [5, 0, 0, 1], sform @ [0, 0, 0, 1], atol=1e-4)
