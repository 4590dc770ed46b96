"""The label cache: label maps on exactly the cached image grid, boxes converted, rebuilt only on change."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import numpy as np
import pytest

from medssl.io.volume import Volume, nifti_gz_bytes
from medssl.preprocess.geometry import cached_affine, world_to_voxel_boxes
from medssl.preprocess.label_cache import LABEL_INDEX_FILE, build_label_cache, ensure_label_cache
from medssl.preprocess.volume_cache import build_cache
from medssl.store.plan import load_or_make_plan
from tests.data.labelled_store import (
    LESION_VALUES,
    default_cases,
    lesion_phantoms,
    remapped_labels,
    store_affine,
    write_labelled_store,
)

COARSE = ("v001", "v004")  # at 2.4 x 2.4 x 3.2 mm: resampled to the plan's 2 x 2 x 3 mm


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = write_labelled_store(tmp_path_factory.mktemp("labels") / "store")
    plan = load_or_make_plan(root)
    index = build_cache(root, plan, progress=False)
    return root, plan, index, build_label_cache(root, plan, index, progress=False)


@pytest.fixture
def fresh(tmp_path):
    root = write_labelled_store(tmp_path / "store")
    plan = load_or_make_plan(root)
    return root, plan, build_cache(root, plan, progress=False)


def snapshot(root):
    return {p.name: p.stat().st_mtime_ns for p in root.iterdir()}


def test_every_label_map_lies_on_its_cached_image_grid(built):
    _, plan, index, labels = built
    assert plan.target_spacing == (2.0, 2.0, 3.0)
    assert sorted(labels.entries) == [v.volume_id for v in index.volumes] and not labels.failed
    for volume in index.volumes:
        entry = labels.entries[volume.volume_id]
        label_map = labels.open(entry)
        assert label_map.shape == index.open(volume).shape == entry.shape == volume.shape
        assert label_map.dtype == np.uint8 and isinstance(label_map, np.memmap)
        assert (index.root / f"{volume.volume_id}.labels.npy").is_file()
    assert (index.root / LABEL_INDEX_FILE).is_file()


def test_a_label_map_at_target_spacing_is_cached_unchanged(built):
    labels = built[3]
    expected, _ = remapped_labels(lesion_phantoms()[0])
    assert np.array_equal(labels.open(labels.entries["v000"]), expected)


@pytest.mark.parametrize("volume_id", COARSE)
@pytest.mark.parametrize("structure", ["liver", "heart", "lesion"])
def test_structures_keep_their_world_position_through_resampling(built, volume_id, structure):
    _, plan, _, labels = built
    i = int(volume_id[1:])
    case, phantom = default_cases()[i], lesion_phantoms()[i]
    original, names = remapped_labels(phantom)
    value = next(v for v, n in names.items() if n == structure) if structure != "lesion" else LESION_VALUES[phantom.lesions[0].kind]
    entry = labels.entries[volume_id]

    def centroid_mm(label_map, affine):
        voxels = np.argwhere(np.asarray(label_map) == value).mean(0)
        return (np.asarray(affine) @ np.append(voxels, 1.0))[:3]

    before = centroid_mm(original, store_affine(case))
    after = centroid_mm(labels.open(entry), entry.affine)
    assert np.all(np.abs(after - before) < np.asarray(plan.target_spacing))  # less than one voxel per axis


def test_world_boxes_convert_onto_the_cached_grid(built):
    labels = built[3]
    for volume_id in ("v000", *COARSE):
        entry = labels.entries[volume_id]
        (label, world), = entry.boxes
        (value, from_map), = [(v, b) for v, b in entry.components if v in LESION_VALUES.values()]
        assert label.startswith("lesion_") and LESION_VALUES[label[len("lesion_"):]] == value
        assert np.allclose(world, from_map, atol=1.0)  # nearest resampling moves an edge by < 1 voxel
    assert labels.entries["v000"].boxes[0][1] == pytest.approx(labels.entries["v000"].components[-1][1])


def test_cached_affine_and_world_boxes_round_trip():
    affine = np.array([[0, 0, 2.0, 5], [0, 1.5, 0, -3], [3.0, 0, 0, 7], [0, 0, 0, 1]])
    assert np.allclose(cached_affine(affine, (10, 20, 30), (10, 20, 30)), affine)
    halved = cached_affine(np.diag([1.0, 1.0, 1.0, 1.0]), (10, 10, 10), (5, 5, 5))
    assert np.allclose(halved @ [0, 0, 0, 1], [0.5, 0.5, 0.5, 1])  # first coarse centre between two fine ones
    lo = (affine @ [1.5, 2.5, 3.5, 1])[:3]
    hi = (affine @ [4.5, 6.5, 9.5, 1])[:3]
    box = world_to_voxel_boxes(np.minimum(lo, hi)[None], np.maximum(lo, hi)[None], affine)
    assert np.allclose(box, [[2, 3, 4, 5, 7, 10]])
    with pytest.raises(ValueError, match="min corner"):
        world_to_voxel_boxes(hi[None] + 1, hi[None], affine)


def test_a_second_build_writes_nothing_and_a_changed_label_rebuilds_only_its_volume(fresh):
    root, plan, index = fresh
    build_label_cache(root, plan, index, progress=False)
    before = snapshot(index.root)
    again = build_label_cache(root, plan, index, progress=False)
    assert snapshot(index.root) == before and len(again.entries) == 6
    # the map of v002 changes (liver erased), and only v003's classes change
    labels, _ = remapped_labels(lesion_phantoms()[2])
    labels[labels == 6] = 0
    data = nifti_gz_bytes(Volume(labels, store_affine(default_cases()[2])))
    (root / "labels" / "v002.nii.gz").write_bytes(data)
    db = sqlite3.connect(root / "manifest.sqlite")
    with db:
        db.execute("UPDATE labels SET mask_sha256 = ? WHERE volume_id = 'v002'", (hashlib.sha256(data).hexdigest(),))
        db.execute("UPDATE labels SET classes = ? WHERE volume_id = 'v003'", (json.dumps(["nodule"]),))
    db.close()
    rebuilt = build_label_cache(root, plan, index, progress=False)
    after = snapshot(index.root)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {"v002.labels.npy", "v002.labels.json", "v003.labels.json", LABEL_INDEX_FILE}
    assert not (rebuilt.open(rebuilt.entries["v002"]) == 6).any()
    assert rebuilt.entries["v003"].classes == ("nodule",)


def test_a_label_map_off_the_volume_grid_is_reported_and_skipped(fresh):
    root, plan, index = fresh
    wrong = np.zeros((10, 10, 10), dtype=np.uint8)
    data = nifti_gz_bytes(Volume(wrong, np.eye(4)))
    (root / "labels" / "v005.nii.gz").write_bytes(data)
    db = sqlite3.connect(root / "manifest.sqlite")
    with db:
        db.execute("UPDATE labels SET mask_sha256 = ? WHERE volume_id = 'v005'", (hashlib.sha256(data).hexdigest(),))
    db.close()
    cache = build_label_cache(root, plan, index, progress=False)
    assert cache.failed == ("v005",) and "v005" not in cache.entries and len(cache.entries) == 5


def test_the_message_names_the_volume_and_both_shapes(fresh):
    from medssl.preprocess.label_cache import cache_labels, init_label_worker, label_jobs

    root, plan, index = fresh
    data = nifti_gz_bytes(Volume(np.zeros((10, 10, 10), dtype=np.uint8), np.eye(4)))
    (root / "labels" / "v000.nii.gz").write_bytes(data)
    db = sqlite3.connect(root / "manifest.sqlite")
    with db:
        db.execute("UPDATE labels SET mask_sha256 = ? WHERE volume_id = 'v000'", (hashlib.sha256(data).hexdigest(),))
    db.close()
    init_label_worker(str(root), str(index.root), plan.to_json())
    outcome = cache_labels(label_jobs(root, plan, index)[0])
    assert outcome["volume_id"] == "v000"
    assert "v000" in outcome["error"] and "(10, 10, 10)" in outcome["error"] and "(48, 48, 32)" in outcome["error"]


@pytest.mark.slow  # spawned workers import torch: ~25 s on 2 cores
def test_worker_processes_build_the_same_cache(fresh, built):
    root, plan, index = fresh
    cache = ensure_label_cache(root, plan, index, workers=2, progress=False)
    reference = built[3]
    for volume_id, entry in cache.entries.items():
        assert entry.components == reference.entries[volume_id].components
        assert np.array_equal(cache.open(entry), reference.open(reference.entries[volume_id]))
