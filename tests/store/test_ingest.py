"""Spec: ``ingest`` turns DICOM series and NIfTI files into canonical volumes in a store.

The contract under test is DESIGN.md section 3 ("Store"): a ``volumes`` and a ``rejected``
table in ``manifest.sqlite``; NIfTI files in RAS+ voxel order with the true world affine;
CT in HU; ids stable for the same source and key; reruns write nothing; no partial file
at a final path, ever.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset

from medssl.errors import ConfigError
from medssl import atomic
from medssl.atomic import TMP_MARK, atomic_write_bytes
from medssl.store.ingest import IngestSummary
from tests.store import dicom_factory as f
from tests.store import store_view as sv
from tests.store.ingest_run import OTHER_KEY, only, run, single_volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Mixed:
    """One folder holding a 6-slice CT series, MR_small and a NIfTI file."""

    root: Path
    series: list[Dataset]
    nifti: nib.Nifti1Image


@pytest.fixture
def mixed(tmp_path: Path) -> Mixed:
    root = tmp_path / "source"
    series = f.make_series(6)
    f.write(series, root / "ct")
    (root / "mr").mkdir()
    shutil.copy(f.testdata(f.MR), root / "mr" / "MR_small.dcm")
    # LAS on disk: the store must flip it to RAS+ without moving any voxel in the world
    affine = np.array([[-2.0, 0, 0, 10], [0, 2.0, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7), affine)
    (root / "nifti").mkdir()
    nib.save(img, root / "nifti" / "volume.nii.gz")
    return Mixed(root, series, img)


@pytest.fixture
def ingested(mixed: Mixed, tmp_path: Path) -> tuple[Path, IngestSummary]:
    store = tmp_path / "store"
    return store, run(mixed.root, store)


def world_to_voxel(affine: np.ndarray, world_ras: np.ndarray) -> np.ndarray:
    """Voxel indices [..., 3] of RAS world points [..., 3]."""
    inv = np.linalg.inv(affine)
    return world_ras @ inv[:3, :3].T + inv[:3, 3]


# -- what lands in the store -----------------------------------------------------------------


def test_manifest_has_the_documented_columns(ingested):
    store, _ = ingested
    assert sv.DOCUMENTED_VOLUME_COLUMNS <= sv.columns(store, "volumes")
    assert sv.DOCUMENTED_REJECTED_COLUMNS <= sv.columns(store, "rejected")


def test_one_volume_per_series_and_per_file(ingested):
    store, summary = ingested
    rows = sv.volumes(store)
    assert (summary.written, summary.skipped, sum(summary.rejected.values())) == (3, 0, 0)
    assert summary.files == 8
    assert sorted((r["modality"] or "", r["source_kind"]) for r in rows) == [
        ("", "nifti"),
        ("CT", "dicom_files"),
        ("MR", "dicom_files"),
    ]
    ct = only(rows, modality="CT")
    assert (json.loads(ct["shape"]), ct["n_images"]) == ([128, 128, 6], 6)
    assert sv.rejected(store) == []


def test_every_row_names_a_file_under_volumes_with_its_sha256(ingested):
    store, _ = ingested
    for row in sv.volumes(store):
        rel = Path(row["path"])
        assert not rel.is_absolute() and ".." not in rel.parts and rel.parts[0] == "volumes"
        assert rel.name == f"{row['volume_id']}.nii.gz"
        assert sv.sha256(store / rel) == row["sha256"]
        assert nib.load(store / rel).shape == tuple(json.loads(row["shape"]))


def test_affine_column_is_the_files_ras_affine(ingested):
    store, _ = ingested
    for row in sv.volumes(store):
        affine = np.array(json.loads(row["affine"]))
        img = nib.load(store / row["path"])
        assert nib.aff2axcodes(affine) == ("R", "A", "S")
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(affine, img.affine, atol=1e-4)
        np.testing.assert_allclose(
            json.loads(row["spacing"]), np.linalg.norm(affine[:3, :3], axis=0), atol=1e-5
        )


def test_dicom_rows_say_how_they_were_deidentified(ingested):
    store, _ = ingested
    for row in sv.volumes(store):
        deid = json.loads(row["deid"])
        assert deid.get("method"), row["source_kind"]
        if row["source_kind"] == "dicom_files":
            assert deid.get("edition") and deid.get("profile")


def test_ct_voxels_are_hounsfield_units_at_their_world_positions(ingested, mixed):
    store, _ = ingested
    row = only(sv.volumes(store), modality="CT")
    img = nib.load(store / row["path"])
    data = np.asarray(img.dataobj)
    assert data.dtype.kind in "iu", "integral HU stay integers"
    for ds in mixed.series:
        ijk = world_to_voxel(img.affine, f.world_lps(ds) @ LPS_TO_RAS)
        index = np.round(ijk).astype(int)
        np.testing.assert_allclose(ijk, index, atol=1e-2)  # every pixel centre is a voxel centre
        np.testing.assert_array_equal(
            data[index[..., 0], index[..., 1], index[..., 2]], f.hounsfield(ds)
        )


def test_nifti_input_keeps_its_voxels_at_their_world_positions(ingested, mixed):
    store, _ = ingested
    row = only(sv.volumes(store), source_kind="nifti")
    out = nib.load(store / row["path"])
    expected = nib.as_closest_canonical(mixed.nifti)
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(expected.dataobj))
    np.testing.assert_allclose(out.affine, expected.affine, atol=1e-5)


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix is not installed")
def test_world_geometry_is_the_one_dcm2niix_gives(ingested, mixed, tmp_path):
    store, _ = ingested
    out = tmp_path / "dcm2niix"
    out.mkdir()
    subprocess.run(
        ["dcm2niix", "-z", "y", "-b", "n", "-f", "ref", "-o", str(out), str(mixed.root / "ct")],
        check=True,
        capture_output=True,
    )
    reference = nib.as_closest_canonical(nib.load(out / "ref.nii.gz"))
    ours = nib.load(store / only(sv.volumes(store), modality="CT")["path"])
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours.affine, reference.affine, atol=1e-3)
    np.testing.assert_array_equal(ours.get_fdata(), reference.get_fdata())


# -- reruns and keys -------------------------------------------------------------------------


def test_rerun_on_the_same_input_writes_nothing(ingested, mixed):
    store, first = ingested
    files_before, rows_before = sv.mtimes(store), sv.volumes(store)
    again = run(mixed.root, store)
    assert (again.written, again.skipped, sum(again.rejected.values())) == (0, first.written, 0)
    assert sv.mtimes(store) == files_before
    assert sv.volumes(store) == rows_before


def test_slices_added_to_an_ingested_series_are_not_ignored(tmp_path):
    series = f.make_series(6)
    # a transfer still running when ingest first sees the folder
    f.write(series[:3], tmp_path / "src", names=["a0.dcm", "a1.dcm", "a2.dcm"])
    run(tmp_path / "src", tmp_path / "store")
    f.write(series[3:], tmp_path / "src", names=["b0.dcm", "b1.dcm", "b2.dcm"])  # the rest arrives
    summary = run(tmp_path / "src", tmp_path / "store")
    assert summary.written == 1
    row = single_volume(tmp_path / "store")
    assert (row["n_images"], json.loads(row["shape"])) == (6, [128, 128, 6])


def test_same_key_gives_the_same_ids_in_a_fresh_store(ingested, mixed, tmp_path):
    store, _ = ingested
    run(mixed.root, tmp_path / "fresh")
    assert sv.volume_by_id(tmp_path / "fresh").keys() == sv.volume_by_id(store).keys()
    assert {r["sha256"] for r in sv.volumes(tmp_path / "fresh")} == {
        r["sha256"] for r in sv.volumes(store)
    }


def test_another_key_gives_other_ids(ingested, mixed, tmp_path):
    store, _ = ingested
    run(mixed.root, tmp_path / "other", key=OTHER_KEY)
    theirs, ours = sv.volumes(tmp_path / "other"), sv.volumes(store)
    assert len(theirs) == len(ours)
    for column in ("volume_id", "patient", "study", "series", "source_ref"):
        assert not {r[column] for r in theirs if r[column]} & {
            r[column] for r in ours if r[column]
        }, column


def test_a_store_refuses_a_second_key(ingested, mixed):
    store, _ = ingested
    files_before, rows_before = sv.mtimes(store), sv.volumes(store)
    with pytest.raises(ConfigError, match="different key"):
        run(mixed.root, store, key=OTHER_KEY)
    assert sv.mtimes(store) == files_before
    assert sv.volumes(store) == rows_before


# -- atomic writes --------------------------------------------------------------------------


def test_no_temporary_name_remains_after_a_run(ingested):
    store, _ = ingested
    assert sv.temporaries(store) == []


def test_stale_temporaries_from_a_killed_run_are_removed_by_the_next(ingested, mixed):
    store, _ = ingested
    planted = [
        store / "volumes" / f".0123456789ab{TMP_MARK}.feedface.nii.gz",
        store / "volumes" / f".ba9876543210{TMP_MARK}.feedface.dicom.json",
        store / f".cafe{TMP_MARK}.plan.json",
    ]
    for path in planted:
        path.write_bytes(b"\x1f\x8b half a file")
    staging = store / "quarantine" / f".deadbeef{TMP_MARK}-4242"
    (staging / "files").mkdir(parents=True)
    (staging / "files" / "00000.dcm").write_bytes(b"partial")
    run(mixed.root, store)
    assert sv.temporaries(store) == []
    assert not staging.exists()
    for row in sv.volumes(store):
        assert sv.sha256(store / row["path"]) == row["sha256"]


def test_a_write_that_dies_midway_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "volume.nii.gz"
    target.write_bytes(b"old complete content")

    def die(_fd):
        raise KeyboardInterrupt  # the process is interrupted after the bytes, before they are durable

    monkeypatch.setattr(atomic.os, "fsync", die)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new content" * 1000)
    monkeypatch.undo()
    assert target.read_bytes() == b"old complete content"
    assert sorted(os.listdir(tmp_path)) == ["volume.nii.gz"]
