"""Spec: a bad label table fails whole, in one line naming the row; a bad label is refused alone.

Table problems (syntax, paths, names) are ConfigErrors before anything is written, and the
message names the case number, never the path. A label that cannot be placed on its image
(unreadable, non-integer, no overlap, ambiguous image) is a ``rejected`` row with unit
``label:<volume_id>`` and a ``label_*`` code, while the image itself is still ingested.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medssl.errors import ConfigError
from medssl.store import labels as L
from medssl.store.label_table import read_label_table
from tests.store import store_view as sv
from tests.store.test_labels_fixtures import (
    label_rejections,
    phantom,
    run,
    save_nifti,
    write_table,
)
from tools.phantom import write_ct_series


@pytest.fixture
def data(tmp_path: Path) -> Path:
    ph = phantom(seed=1)
    folder = tmp_path / "data"
    save_nifti(ph.image, ph.affine, folder / "img.nii.gz")
    save_nifti(ph.labels, ph.affine, folder / "seg.nii.gz")
    return folder


# -- the table -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ({"image": "../outside/img.nii.gz"}, "stay inside the table's folder"),
        ({"image": "img.nii.gz\x00.dcm"}, "NUL"),
        ({"image": "PATIENT-NAME-missing.nii.gz"}, "does not exist"),
        ({"image": "img.nii.gz", "mask": "nope.nii.gz"}, "does not exist"),
        ({"image": "img.nii.gz", "classes": ["no<script>"]}, "name"),
        ({"image": "img.nii.gz", "boxes": [{"label": "x", "min": [0, 0, 0], "max": [1, -1, 1]}]}, "below max"),
        ({"image": "img.nii.gz", "boxes": [{"label": "x", "min": [0, 0], "max": [1, 1, 1]}]}, "three numbers"),
        ({"image": "img.nii.gz", "colour": "red"}, "unknown keys"),
        ({"mask": "seg.nii.gz"}, "'image' is required"),
    ],
)
def test_bad_rows_fail_naming_the_row_not_the_path(data, tmp_path, case, match):
    (tmp_path / "outside").mkdir(exist_ok=True)
    save_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / "outside" / "img.nii.gz")
    table = write_table(data / "t.yaml", [{"image": "img.nii.gz"}, case])
    with pytest.raises(ConfigError, match=match) as info:
        run(tmp_path / "store", table)
    message = str(info.value)
    assert "case 2" in message and "PATIENT" not in message and "nope" not in message and "\n" not in message
    assert not (tmp_path / "store").exists()  # nothing written before the table is whole


def test_absolute_paths_are_taken_as_written(data, tmp_path):
    table = write_table(tmp_path / "elsewhere" / "t.yaml", [{"image": str(data / "img.nii.gz"), "mask": str(data / "seg.nii.gz")}])
    assert read_label_table(table).cases[0].image == data / "img.nii.gz"


def test_malformed_yaml_fails_in_one_line(data, tmp_path):
    table = data / "t.yaml"
    table.write_text("cases:\n  - image: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        run(tmp_path / "store", table)


@pytest.mark.parametrize(
    ("top", "match"),
    [
        ({"structures": {1: "liver", 2: "bad\nname"}}, "structures value 2"),
        ({"structures": {0: "background"}}, "outside 1..65535"),
        ({"structures": {1: "a", 2: "a"}}, "share one name"),
        ({"classes": ["normal", "x" * 65]}, "1-64 characters"),
        ({"classes": ["normal"], "cases": [{"image": "img.nii.gz", "classes": ["tumour"]}]}, "not in the table's 'classes'"),
    ],
)
def test_bad_vocabularies_are_refused(data, tmp_path, top, match):
    cases = top.pop("cases", [{"image": "img.nii.gz"}])
    with pytest.raises(ConfigError, match=match):
        read_label_table(write_table(data / "t.yaml", cases, **top))


def test_structures_csv_needs_value_and_name_columns(data):
    (data / "s.csv").write_text("colour,size\nred,1\n")
    with pytest.raises(ConfigError, match="value column"):
        read_label_table(write_table(data / "t.yaml", [{"image": "img.nii.gz"}], structures="s.csv"))


def test_csv_table_with_unknown_columns_is_refused(data):
    (data / "t.csv").write_text("image,patient_name\nimg.nii.gz,x\n")
    with pytest.raises(ConfigError, match="columns"):
        read_label_table(data / "t.csv")


def test_same_image_twice_is_refused(data):
    with pytest.raises(ConfigError, match="same image as case 1"):
        read_label_table(write_table(data / "t.yaml", [{"image": "img.nii.gz"}, {"image": "./img.nii.gz"}]))


# -- labels refused, images kept -------------------------------------------------------------


def refused_one(store: Path, table: Path, code: str) -> dict:
    summary = run(store, table)
    assert summary.written == 1 and summary.labels_written == 0 and summary.labels_rejected == 1
    (row,) = label_rejections(store)
    assert row["code"] == code and row["message"].startswith("label table case 1:")
    assert len(sv.volumes(store)) == 1 and L.read_labels(store) == {}
    return row


def test_mask_that_does_not_overlap_the_image(data, tmp_path):
    ph = phantom(seed=1)
    far = ph.affine.copy()
    far[:3, 3] += 5000.0
    save_nifti(ph.labels, far, data / "far.nii.gz")
    row = refused_one(tmp_path / "s", write_table(data / "t.yaml", [{"image": "img.nii.gz", "mask": "far.nii.gz"}]), "label_mismatch")
    assert "overlap" in row["message"]


def test_non_integer_mask(data, tmp_path):
    save_nifti(np.full(phantom().shape, 0.5, np.float32), phantom().affine, data / "soft.nii.gz")
    row = refused_one(tmp_path / "s", write_table(data / "t.yaml", [{"image": "img.nii.gz", "mask": "soft.nii.gz"}]), "label_invalid")
    assert "non-integer" in row["message"]


def test_negative_mask(data, tmp_path):
    ph = phantom()
    save_nifti(-ph.labels.astype(np.int16), ph.affine, data / "neg.nii.gz")
    refused_one(tmp_path / "s", write_table(data / "t.yaml", [{"image": "img.nii.gz", "mask": "neg.nii.gz"}]), "label_invalid")


def test_four_dimensional_mask(data, tmp_path):
    ph = phantom()
    save_nifti(np.stack([ph.labels] * 2, axis=-1), ph.affine, data / "4d.nii.gz")
    row = refused_one(tmp_path / "s", write_table(data / "t.yaml", [{"image": "img.nii.gz", "mask": "4d.nii.gz"}]), "label_invalid")
    assert "4 dimensions" in row["message"]


def test_values_missing_from_structures(data, tmp_path):
    table = write_table(data / "t.yaml", [{"image": "img.nii.gz", "mask": "seg.nii.gz"}], structures={1: "body"})
    row = refused_one(tmp_path / "s", table, "label_invalid")
    assert "not in the table's structures" in row["message"]


def test_header_bomb_mask(data, tmp_path):
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape((32767, 32767, 32767))
    (data / "bomb.nii.gz").write_bytes(gzip.compress(header.binaryblock + b"\0" * 132))
    row = refused_one(tmp_path / "s", write_table(data / "t.yaml", [{"image": "img.nii.gz", "mask": "bomb.nii.gz"}]), "label_invalid")
    assert "too_large" in row["message"]


def test_box_outside_the_image(data, tmp_path):
    box = {"label": "lesion", "min": [900.0, 900.0, 900.0], "max": [910.0, 910.0, 910.0]}
    refused_one(tmp_path / "s", write_table(data / "t.yaml", [{"image": "img.nii.gz", "boxes": [box]}]), "label_mismatch")


def test_image_folder_with_two_series_is_ambiguous(tmp_path):
    ph = phantom(seed=5, n_lesions=0)
    folder = tmp_path / "data"
    write_ct_series(ph, folder / "study", series_number=1, seed=1)
    write_ct_series(ph, folder / "study", series_number=2, orientation="coronal", seed=2)
    store = tmp_path / "s"
    summary = run(store, write_table(folder / "t.yaml", [{"image": "study", "classes": ["normal"]}]))
    assert summary.written == 2 and summary.labels_rejected == 1
    (row,) = label_rejections(store)
    assert row["code"] == "label_ambiguous" and "2 volumes" in row["message"]


def test_refused_image_leaves_its_label_refused(data, tmp_path):
    (data / "broken.nii").write_bytes(b"\x5c\x01\x00\x00" + b"\0" * 100)  # a NIfTI header cut short
    store = tmp_path / "s"
    summary = run(store, write_table(data / "t.yaml", [{"image": "broken.nii", "classes": ["normal"]}]))
    assert summary.labels_rejected == 1 and label_rejections(store)[0]["code"] == "label_no_image"


def test_label_refused_after_a_change_drops_its_old_version(data, tmp_path):
    ph = phantom()
    table = write_table(data / "t.yaml", [{"image": "img.nii.gz", "mask": "seg.nii.gz"}])
    store = tmp_path / "s"
    run(store, table)
    (record,) = L.read_labels(store).values()
    save_nifti(np.full(ph.shape, 0.5, np.float32), ph.affine, data / "seg.nii.gz")
    assert run(store, table).labels_rejected == 1
    assert L.read_labels(store) == {} and not (store / record.mask_path).exists()
    save_nifti(ph.labels, ph.affine, data / "seg.nii.gz")  # fixed: accepted again, refusal forgotten
    assert run(store, table).labels_written == 1 and not label_rejections(store)
