"""Spec: ``ingest --labels TABLE`` puts label maps, classes and boxes on the volumes' grids.

A label map lands in ``labels/<volume_id>.nii.gz`` with exactly the shape and affine of
``volumes/<volume_id>.nii.gz``, whatever orientation or resolution the mask came in; the
``labels`` table and :mod:`medssl.store.labels` give it back; reruns write nothing.
"""

from __future__ import annotations

import gzip
import sqlite3
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medssl.errors import ConfigError
from medssl.store import labels as L
from medssl.store.label_ingest import RESAMPLED
from tests.store import store_view as sv
from tests.store.test_labels_fixtures import (
    label_rejections,
    phantom,
    run,
    save_nifti,
    structures_of,
    volume_file,
    write_table,
)
from tools.phantom import write_ct_series


@pytest.fixture
def case(tmp_path: Path):
    """A CT phantom as NIfTI, its label map beside it, and a YAML table naming both."""
    ph = phantom(seed=1, n_lesions=1)
    data = tmp_path / "data"
    save_nifti(ph.image, ph.affine, data / "ct" / "case01.nii.gz")
    save_nifti(ph.labels.astype(np.uint8), ph.affine, data / "ct" / "case01_seg.nii.gz")
    lesion = ph.lesions[0]
    box = {"label": "lesion", "min": [c - 5.0 for c in lesion.center_world], "max": [c + 5.0 for c in lesion.center_world]}
    table = write_table(
        data / "labels.yaml",
        [{"image": "ct/case01.nii.gz", "mask": "ct/case01_seg.nii.gz", "classes": ["nodule"], "boxes": [box]}],
        structures=structures_of(ph),
        classes=["normal", "nodule", "cyst"],
    )
    return ph, data, table


def only_record(store: Path) -> L.LabelRecord:
    records = L.read_labels(store)
    assert len(records) == 1, records
    return next(iter(records.values()))


def test_same_grid_mask_is_copied_exactly_with_the_volume_geometry(case, tmp_path):
    ph, _, table = case
    store = tmp_path / "store"
    summary = run(store, table)
    assert (summary.written, summary.labels_written, summary.labels_rejected) == (1, 1, 0)
    record = only_record(store)
    assert record.mask_path == f"labels/{record.volume_id}.nii.gz"
    mask = L.read_label_map(store, record)
    assert mask.dtype == np.uint8 and np.array_equal(mask, ph.labels)
    label_img, volume_img = nib.load(store / record.mask_path), volume_file(store, record.volume_id)
    assert label_img.shape == volume_img.shape
    assert np.array_equal(label_img.affine, volume_img.affine)
    assert nib.aff2axcodes(label_img.affine) == ("R", "A", "S")
    assert b"CANARY" not in gzip.decompress((store / record.mask_path).read_bytes())  # header rebuilt
    row = sv.query(store, "SELECT * FROM labels")[0]
    assert sv.row_json(row, "corrections") == []


def test_record_carries_structures_classes_and_boxes(case, tmp_path):
    ph, _, table = case
    store = tmp_path / "store"
    run(store, table)
    record = only_record(store)
    assert record.structures == structures_of(ph) and 0 not in record.structures
    assert record.classes == ("nodule",)
    (box,) = record.boxes
    assert box.label == "lesion" and all(a < b for a, b in zip(box.min, box.max))
    assert L.structure_names(store) == structures_of(ph)
    assert L.class_names(store) == ["normal", "nodule", "cyst"]  # the table's vocabulary, in order


def test_store_without_labels_reads_as_empty(tmp_path):
    assert L.read_labels(tmp_path) == {} and L.structure_names(tmp_path) == {} and L.class_names(tmp_path) == []


def test_lps_oriented_mask_lands_on_the_ras_grid(case, tmp_path):
    ph, data, _ = case
    # i and j stored reversed: an LPS-ordered file of the same world voxels
    flipped_affine = ph.affine @ np.array([[-1, 0, 0, ph.shape[0] - 1], [0, -1, 0, ph.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    assert nib.aff2axcodes(flipped_affine) == ("L", "P", "S")
    save_nifti(ph.labels[::-1, ::-1, :].copy(), flipped_affine, data / "ct" / "lps_seg.nii.gz")
    table = write_table(data / "lps.yaml", [{"image": "ct/case01.nii.gz", "mask": "ct/lps_seg.nii.gz"}], structures=structures_of(ph))
    store = tmp_path / "store"
    run(store, table)
    assert np.array_equal(L.read_label_map(store, only_record(store)), ph.labels)


def test_finer_mask_is_resampled_by_nearest_neighbour_and_says_so(case, tmp_path):
    ph, data, _ = case
    fine = np.repeat(np.repeat(np.repeat(ph.labels, 2, 0), 2, 1), 2, 2)
    affine = ph.affine.copy()
    affine[:3, :3] /= 2.0
    affine[:3, 3] -= np.diag(ph.affine)[:3] / 4.0  # voxel centres of the 2x grid
    save_nifti(fine, affine, data / "ct" / "fine_seg.nii.gz")
    table = write_table(data / "fine.yaml", [{"image": "ct/case01.nii.gz", "mask": "ct/fine_seg.nii.gz"}], structures=structures_of(ph))
    store = tmp_path / "store"
    run(store, table)
    record = only_record(store)
    assert np.array_equal(L.read_label_map(store, record), ph.labels)
    row = sv.query(store, "SELECT corrections FROM labels")[0]
    assert sv.row_json(row, "corrections") == [RESAMPLED]


def test_dicom_series_with_a_nifti_mask(tmp_path):
    ph = phantom(seed=2, n_lesions=2)
    data = tmp_path / "data"
    write_ct_series(ph, data / "series", seed=2)
    save_nifti(ph.labels, ph.affine, data / "masks" / "seg.nii.gz")
    table = write_table(data / "t.yaml", [{"image": "series", "mask": "masks/seg.nii.gz", "classes": ["solid nodule"]}], structures=structures_of(ph))
    store = tmp_path / "store"
    summary = run(store, table)
    assert summary.written == 1 and summary.labels_written == 1
    record = only_record(store)
    assert np.array_equal(L.read_label_map(store, record), ph.labels)
    assert sv.volumes(store)[0]["source_kind"] == "dicom_files"


def test_values_above_255_are_stored_as_uint16(case, tmp_path):
    ph, data, _ = case
    big = ph.labels.astype(np.uint16) * 300
    save_nifti(big, ph.affine, data / "ct" / "big_seg.nii.gz")
    table = write_table(data / "csv-free.yaml", [{"image": "ct/case01.nii.gz", "mask": "ct/big_seg.nii.gz"}])
    store = tmp_path / "store"
    run(store, table)
    record = only_record(store)
    mask = L.read_label_map(store, record)
    assert mask.dtype == np.uint16 and np.array_equal(mask, big)
    assert record.structures == {v: f"label_{v}" for v in np.unique(big) if v}


def test_csv_table_with_a_structures_csv_beside_it(case, tmp_path):
    ph, data, yaml_table = case
    yaml_table.unlink()  # only the CSV table sits in the source folder
    lines = ["group,original_idx,structure,id"] + [f"g,{v},{n},{v}" for v, n in structures_of(ph).items()]
    (data / "structures.csv").write_text("\n".join(lines) + "\n")
    (data / "labels.csv").write_text("image,mask,classes\nct/case01.nii.gz,ct/case01_seg.nii.gz,nodule;cyst\n")
    store = tmp_path / "store"
    summary = run(store, data / "labels.csv", sources=[data])  # table and CSVs inside the source
    assert summary.rejected == {} and summary.written == 1  # masks and CSVs are not images
    record = only_record(store)
    assert record.structures == structures_of(ph) and record.classes == ("nodule", "cyst")
    assert L.class_names(store) == ["cyst", "nodule"]  # no vocabulary: sorted union


def test_classes_only_case_has_no_map(case, tmp_path):
    _, data, _ = case
    table = write_table(data / "dx.yaml", [{"image": "ct/case01.nii.gz", "classes": ["normal"]}])
    store = tmp_path / "store"
    run(store, table)
    record = only_record(store)
    assert record.mask_path is None and record.classes == ("normal",)
    with pytest.raises(ValueError, match="no label map"):
        L.read_label_map(store, record)


def test_rerun_writes_nothing(case, tmp_path):
    _, data, table = case
    store = tmp_path / "store"
    run(store, table, sources=[data])
    before = sv.mtimes(store)
    summary = run(store, table, sources=[data])
    assert (summary.labels_written, summary.labels_skipped, summary.written) == (0, 1, 0)
    assert sv.mtimes(store) == before


def test_changed_mask_or_row_is_rewritten(case, tmp_path):
    ph, data, table = case
    store = tmp_path / "store"
    run(store, table)
    first = only_record(store)
    changed = ph.labels.copy()
    changed[changed == 6] = 7
    save_nifti(changed, ph.affine, data / "ct" / "case01_seg.nii.gz")
    assert run(store, table).labels_written == 1
    second = only_record(store)
    assert second.mask_sha256 != first.mask_sha256
    assert np.array_equal(L.read_label_map(store, second), changed)
    write_table(table, [{"image": "ct/case01.nii.gz", "mask": "ct/case01_seg.nii.gz", "classes": ["cyst"]}], structures=structures_of(ph))
    assert run(store, table).labels_written == 1 and only_record(store).classes == ("cyst",)


def test_tampered_label_file_is_detected_and_rewritten(case, tmp_path):
    _, _, table = case
    store = tmp_path / "store"
    run(store, table)
    record = only_record(store)
    good = (store / record.mask_path).read_bytes()
    (store / record.mask_path).write_bytes(gzip.compress(b"x" * 400))
    with pytest.raises(ValueError, match="sha256"):
        L.read_label_map(store, record)
    assert run(store, table).labels_written == 1  # a rerun repairs it, byte-identical
    assert (store / record.mask_path).read_bytes() == good


def test_killed_between_file_and_row_resumes(case, tmp_path):
    _, _, table = case
    store = tmp_path / "store"
    run(store, table)
    record = only_record(store)
    data = (store / record.mask_path).read_bytes()
    with sqlite3.connect(store / "manifest.sqlite") as db:  # the row was never committed
        db.execute("DELETE FROM labels")
    (store / "labels" / ".abc.medssl-tmp.x.nii.gz").write_bytes(b"partial")
    assert run(store, table).labels_written == 1
    assert (store / record.mask_path).read_bytes() == data and not sv.temporaries(store)


def test_a_second_table_renaming_a_value_is_refused_at_ingest(case, tmp_path):
    """Two names for one value would stop fine-tuning; ingest refuses the second table instead
    (more cases: tests/store/test_labels_vocabulary.py)."""
    _, data, table = case
    other = phantom(seed=4, n_lesions=0)
    save_nifti(other.image, other.affine, data / "b" / "img.nii.gz")
    save_nifti(other.labels, other.affine, data / "b" / "seg.nii.gz")
    renamed = {**structures_of(other), 6: "hepar"}
    table2 = write_table(data / "b.yaml", [{"image": "b/img.nii.gz", "mask": "b/seg.nii.gz"}], structures=renamed)
    store = tmp_path / "store"
    run(store, table)
    with pytest.raises(ConfigError, match="label value 6 is 'hepar' in the table's structures but 'liver'"):
        run(store, table2)
    assert len(L.read_labels(store)) == 1 and L.structure_names(store)[6] == "liver"


def test_no_identifier_from_paths_reaches_the_store(tmp_path):
    ph = phantom(seed=3)
    data = tmp_path / "DOE^JANE-CANARY"
    save_nifti(ph.image, ph.affine, data / "CANARY-1234567" / "img.nii.gz")
    save_nifti(ph.labels, ph.affine, data / "CANARY-1234567" / "CANARY_seg.nii.gz")
    table = write_table(data / "CANARY.yaml", [
        {"image": "CANARY-1234567/img.nii.gz", "mask": "CANARY-1234567/CANARY_seg.nii.gz"},
        {"image": "CANARY-1234567", "classes": ["x"]},  # refused (ambiguous): its message is checked too
    ])
    store = tmp_path / "store"
    run(store, table)
    assert len(label_rejections(store)) == 1
    names = [str(p) for p in sv.files(store)]
    assert not any("CANARY" in n for n in names)
    with sqlite3.connect(store / "manifest.sqlite") as db:
        dump = "\n".join(db.iterdump())
    assert "CANARY" not in dump and "DOE" not in dump


def test_cli_ingests_a_table_without_sources(case, tmp_path, capsys):
    from medssl.cli import main

    _, _, table = case
    store = tmp_path / "store"
    rc = main(["ingest", "--out", str(store), "--labels", str(table), "--key-file", str(tmp_path / "k.key"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "labels written" in out and len(L.read_labels(store)) == 1


def test_cli_without_sources_or_table_fails_in_one_line(tmp_path, capsys):
    from medssl.cli import main

    rc = main(["ingest", "--out", str(tmp_path / "s"), "--key-file", str(tmp_path / "k.key")])
    err = capsys.readouterr().err
    assert rc == 2 and "--labels" in err and len(err.strip().splitlines()) == 1
