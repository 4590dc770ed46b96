"""Spec: a label value has one name in a store. Two names for one value are refused at ingest,
in one line naming the value and both names, never left for fine-tuning to trip over."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
    seg_frames,
    structures_of,
    write_seg,
    write_table,
)


def _case(data: Path, name: str, seed: int) -> dict:
    ph = phantom(seed=seed, n_lesions=0)
    save_nifti(ph.image, ph.affine, data / name / "img.nii.gz")
    save_nifti(ph.labels.astype(np.uint8), ph.affine, data / name / "seg.nii.gz")
    return {"image": f"{name}/img.nii.gz", "mask": f"{name}/seg.nii.gz"}


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, dict[int, str]]:
    folder = tmp_path / "data"
    _case(folder, "a", 1)
    _case(folder, "b", 4)
    return folder, structures_of(phantom(seed=1, n_lesions=0))


# -- one table ---------------------------------------------------------------------------------


def test_a_yaml_table_naming_one_value_twice_is_refused(data):
    folder, _ = data
    table = folder / "t.yaml"
    table.write_text("structures: {1: liver, '1': kidney}\ncases:\n  - image: a/img.nii.gz\n")
    with pytest.raises(ConfigError, match=r"^structures: label value 1 is named 'liver' and 'kidney' \(structures entries 1 and 2\); one value, one name$"):
        read_label_table(table)


def test_a_structures_csv_naming_one_value_twice_is_refused(data):
    folder, _ = data
    (folder / "s.csv").write_text("value,name\n1,liver\n2,spleen\n01,kidney\n")
    table = write_table(folder / "t.yaml", [{"image": "a/img.nii.gz"}], structures="s.csv")
    with pytest.raises(ConfigError, match=r"label value 1 is named 'liver' and 'kidney' \(structures CSV rows 1 and 3\)"):
        read_label_table(table)
    (folder / "s.csv").write_text("value,name\n1,liver\n1,liver\n")
    with pytest.raises(ConfigError, match="label value 1 is named 'liver' twice"):
        read_label_table(table)


# -- across tables and runs --------------------------------------------------------------------


def test_a_second_table_renaming_a_value_is_refused_before_writing_any_label(data, tmp_path):
    folder, names = data
    store = tmp_path / "store"
    run(store, write_table(folder / "a.yaml", [{"image": "a/img.nii.gz", "mask": "a/seg.nii.gz"}], structures=names))
    renamed = write_table(folder / "b.yaml", [{"image": "b/img.nii.gz", "mask": "b/seg.nii.gz"}],
                          structures={**names, 6: "hepar"})
    with pytest.raises(ConfigError) as info:
        run(store, renamed)
    message = str(info.value)
    assert message.startswith("label table: label value 6 is 'hepar' in the table's structures but 'liver' in the store's labels (volume ")
    assert "\n" not in message and "img.nii.gz" not in message
    assert len(L.read_labels(store)) == 1
    assert L.structure_names(store) == names  # fine-tuning reads one vocabulary


def test_a_table_may_rename_the_labels_it_wrote_itself(data, tmp_path):
    folder, names = data
    store = tmp_path / "store"
    cases = [{"image": "a/img.nii.gz", "mask": "a/seg.nii.gz"}]
    run(store, write_table(folder / "a.yaml", cases, structures=names))
    summary = run(store, write_table(folder / "a.yaml", cases, structures={**names, 6: "hepar"}))
    assert summary.labels_written == 1 and not label_rejections(store)
    assert L.structure_names(store)[6] == "hepar"


def test_a_case_whose_own_names_clash_is_refused_alone(data, tmp_path):
    """A CSV table without a structures CSV names values ``label_<v>``; the store says otherwise."""
    folder, names = data
    store = tmp_path / "store"
    run(store, write_table(folder / "a.yaml", [{"image": "a/img.nii.gz", "mask": "a/seg.nii.gz"}], structures=names))
    table = folder / "plain" / "t.csv"
    table.parent.mkdir()
    table.write_text(f"image,mask\n{folder / 'b' / 'img.nii.gz'},{folder / 'b' / 'seg.nii.gz'}\n")
    summary = run(store, table)
    assert summary.labels_rejected == 1 and summary.labels_written == 0
    (rejected,) = label_rejections(store)
    assert rejected["code"] == "label_invalid"
    assert rejected["message"] == (f"label table case 1: label value 1 is 'label_1' in its mask but '{names[1]}' "
                                   f"in the store's labels (volume {only_volume_with_labels(store)}); one value, one name")
    assert len(sv.volumes(store)) == 2  # the image is still ingested


def only_volume_with_labels(store: Path) -> str:
    (vid,) = L.read_labels(store)
    return vid


def test_two_segs_of_one_table_naming_a_segment_differently(tmp_path):
    from tools.phantom import write_ct_series

    data = tmp_path / "data"
    cases = []
    for n, (seed, name) in enumerate(((1, "liver"), (4, "hepar"))):
        ph = phantom(seed=seed, n_lesions=0)
        paths = write_ct_series(ph, data / f"s{n}", patient_id=f"P{n}", seed=seed)
        write_seg(paths, seg_frames(ph, [6]), [name], data / f"seg{n}.dcm")
        cases.append({"image": f"s{n}", "mask": f"seg{n}.dcm"})
    store = tmp_path / "store"
    summary = run(store, write_table(data / "t.yaml", cases))
    assert summary.labels_written == 1 and summary.labels_rejected == 1
    (rejected,) = label_rejections(store)
    assert rejected["message"] == ("label table case 2: label value 1 is 'hepar' in its mask but 'liver' in case 1; "
                                   "one value, one name")
    assert L.structure_names(store) == {1: "liver"}


def test_fine_tuning_still_names_a_store_written_before_the_check(data, tmp_path):
    """Stores ingested by an older medssl may disagree: fine-tuning says so in one line."""
    folder, names = data
    store = tmp_path / "store"
    run(store, write_table(folder / "t.yaml", [{"image": "a/img.nii.gz", "mask": "a/seg.nii.gz"},
                                               {"image": "b/img.nii.gz", "mask": "b/seg.nii.gz"}], structures=names))
    with sqlite3.connect(store / "manifest.sqlite") as db:
        vid = db.execute("SELECT volume_id FROM labels ORDER BY volume_id DESC").fetchone()[0]
        db.execute("UPDATE labels SET structures = ? WHERE volume_id = ?", ('{"6": "hepar"}', vid))
    with pytest.raises(ValueError, match="label value 6 is 'liver' in one record and 'hepar'"):
        L.structure_names(store)
