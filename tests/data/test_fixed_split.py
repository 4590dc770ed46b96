"""A label table can fix the train/validation sides (``split: train|val``): the sides reach the
manifest, every data module honours them, and bad tables or contradictory sides are refused."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest
import torch

from medssl.data.finetune import FinetuneDataModule
from medssl.data.split import split_by_patient
from medssl.errors import ConfigError
from medssl.preprocess.volume_cache import CachedVolume
from medssl.store.label_table import read_label_table
from medssl.store.labels import read_labels, read_split
from medssl.store.manifest import Manifest
from medssl.types import SplitSide
from tests.data.labelled_store import write_labelled_store
from tests.store.test_labels_fixtures import phantom, run, save_nifti, structures_of, write_table

VAL, TRAIN = SplitSide.VAL, SplitSide.TRAIN


def volumes(patients: list[str | None], ids: list[str] | None = None) -> list[CachedVolume]:
    ids = ids or [f"v{i:03d}" for i in range(len(patients))]
    return [CachedVolume(v, f"{v}.npy", (8, 8, 8), (1.0, 1.0, 1.0), "CT", p, None, 0.0, "0" * 64) for v, p in zip(ids, patients)]


# the split itself ----------------------------------------------------------------------------
def test_fixed_sides_decide_and_the_hash_does_not():
    vols = volumes(["a", "b", "c", "d", None])
    fixed = {"v001": VAL, "v003": VAL, "v000": TRAIN}
    for seed in range(5):  # the seed and the fraction no longer move anything
        assert split_by_patient(vols, 0.9 if seed else 0.1, seed, fixed) == ([0, 2, 4], [1, 3])  # equal sha256: index order


def test_a_patient_follows_its_marked_volume_and_frames_follow_their_series():
    vols = volumes(["a", "a", "b", "b"], ["s1.t0000", "s1.t0001", "x", "y"])
    assert split_by_patient(vols, 0.2, 0, {"s1": VAL}) == ([2, 3], [0, 1])
    both = volumes(["a", "a", "b"])
    with pytest.raises(ConfigError, match="one side"):
        split_by_patient(both, 0.2, 0, {"v000": VAL, "v001": TRAIN})


def test_zero_fraction_switches_validation_off_and_unplaced_volumes_hash():
    vols = volumes(["a", "b", "c"])
    assert split_by_patient(vols, 0.0, 0, {"v001": VAL}) == ([0, 1, 2], [])
    other_store = {"zzz": VAL}  # sides for volumes not in this list: the hashed split
    assert split_by_patient(vols, 0.4, 3, other_store) == split_by_patient(vols, 0.4, 3)


# the label table and the manifest ----------------------------------------------------------
def test_the_table_takes_train_or_val_and_names_the_row_of_anything_else(tmp_path):
    for name in "abc":
        (tmp_path / f"{name}.nii.gz").write_bytes(b"x")
    table = write_table(tmp_path / "t.yaml", [{"image": "a.nii.gz", "split": "val"}, {"image": "b.nii.gz", "split": "train"}, {"image": "c.nii.gz"}])
    assert [c.split for c in read_label_table(table).cases] == [VAL, TRAIN, None]
    write_table(table, [{"image": "a.nii.gz"}, {"image": "b.nii.gz", "split": "test"}])
    with pytest.raises(ConfigError, match="case 2: 'split' is 'test'"):
        read_label_table(table)


def test_ingest_records_the_sides_and_a_changed_side_alone_is_rewritten(tmp_path):
    ph = phantom(seed=1, n_lesions=0)
    data = tmp_path / "data"
    for name in ("a", "b"):
        save_nifti(ph.image + (name == "b"), ph.affine, data / f"{name}.nii.gz")
        save_nifti(ph.labels.astype(np.uint8), ph.affine, data / f"{name}_seg.nii.gz")
    cases = [{"image": "a.nii.gz", "mask": "a_seg.nii.gz", "split": "val"}, {"image": "b.nii.gz", "mask": "b_seg.nii.gz"}]
    table = write_table(data / "labels.yaml", cases, structures=structures_of(ph))
    store = tmp_path / "store"
    assert run(store, table).labels_written == 2
    sides = read_split(store)
    assert list(sides.values()) == [VAL] and len(read_labels(store)) == 2
    assert run(store, table).labels_written == 0  # unchanged: nothing rewritten
    cases[0]["split"], cases[1]["split"] = "train", "val"
    write_table(table, cases, structures=structures_of(ph))
    assert run(store, table).labels_written == 2
    flipped = read_split(store)
    assert set(flipped.values()) == {TRAIN, VAL} and flipped.keys() == read_labels(store).keys()
    assert [flipped[v] for v in sides] == [TRAIN]


def test_a_store_from_before_splits_gains_the_column_and_reads_as_unsplit(tmp_path):
    root = write_labelled_store(tmp_path / "store")
    with sqlite3.connect(root / "manifest.sqlite") as db:  # as a store labelled before splits existed
        db.execute("ALTER TABLE labels DROP COLUMN split")
    columns = lambda: {r[1] for r in sqlite3.connect(root / "manifest.sqlite").execute("PRAGMA table_info(labels)")}
    assert "split" not in columns() and read_split(root) == {}
    Manifest(root / "manifest.sqlite").close()
    assert "split" in columns() and read_split(root) == {}


# the data modules --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = write_labelled_store(tmp_path_factory.mktemp("fixed") / "store")
    FinetuneDataModule(str(root), progress=False).prepare_data()
    return root


def mark(store, tmp_path, sides: dict[str, str]):
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    with Manifest(copy / "manifest.sqlite") as m, m.db:
        for vid, side in sides.items():
            m.db.execute("UPDATE labels SET split = ? WHERE volume_id = ?", (side, vid))
    return copy


def test_finetuning_validates_on_the_marked_cases(store, tmp_path):
    fixed = mark(store, tmp_path, {"v003": "val", "v005": "val"})
    dm = FinetuneDataModule(str(fixed), crop_size=[32, 32, 16], num_workers=0, progress=False, val_fraction=0.2, split_seed=7)
    dm.setup("fit")
    assert sorted(dm.val_cases) == ["v003", "v005"] and sorted(dm.train_cases) == ["v000", "v001", "v002", "v004"]
    off = FinetuneDataModule(str(fixed), crop_size=[32, 32, 16], num_workers=0, progress=False, val_fraction=0.0)
    off.setup("fit")
    assert off.val_cases == [] and len(off.train_cases) == 6


def test_a_patient_split_across_sides_by_the_table_is_refused(store, tmp_path):
    fixed = mark(store, tmp_path, {"v000": "val", "v001": "train"})  # both volumes of patient p0
    dm = FinetuneDataModule(str(fixed), crop_size=[32, 32, 16], num_workers=0, progress=False)
    with pytest.raises(ConfigError, match="one side"):
        dm.setup("fit")


# the project key moves nothing ---------------------------------------------------------------
def test_a_store_ingested_under_another_key_trains_on_the_same_crops(tmp_path):
    """A fresh demo-out makes a fresh key, so every pseudonym changes: the split (fixed by the
    table), the nested label subset and the crop draws must not."""
    from medssl.store.fingerprint import fingerprint
    from medssl.store.ingest import IngestOptions, ingest

    data = tmp_path / "data"
    cases = []
    for n in range(4):
        ph = phantom(seed=10 + n, n_lesions=0)
        save_nifti(ph.image, ph.affine, data / f"c{n}.nii.gz")
        save_nifti(ph.labels.astype(np.uint8), ph.affine, data / f"c{n}_seg.nii.gz")
        cases.append({"image": f"c{n}.nii.gz", "mask": f"c{n}_seg.nii.gz", **({"split": "val"} if n == 2 else {})})
    table = write_table(data / "labels.yaml", cases, structures=structures_of(ph))
    crops, subsets, prints = [], [], []
    for key in (bytes(range(32)), bytes(range(1, 33))):
        store = tmp_path / f"store{key[0]}"
        ingest([], store, key, IngestOptions(progress=False, labels=table))
        dm = FinetuneDataModule(str(store), crop_size=[16, 16, 8], num_workers=0, progress=False, label_fraction=0.5, fraction_seed=3, val_fraction=0.2)
        dm.prepare_data()
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        crops.append(batch["image"])
        prints.append(fingerprint(store, voxels_per_volume=500))  # subsampled: the plan's statistics
        subsets.append(sorted(v.sha256 for v in dm.index.volumes if v.volume_id in dm.train_cases))
        assert len(dm.val_cases) == 1 and len(dm.train_cases) == 2  # half of the 3 training cases, rounded
    assert subsets[0] == subsets[1]
    assert torch.equal(crops[0], crops[1])
    assert prints[0] == prints[1]
