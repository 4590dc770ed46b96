"""The volume cache: right values, built once, resumable, shared safely across ranks."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from medssl.atomic import TMP_MARK
from medssl.preprocess.build_once import INDEX_FILE, distributed_rank
from medssl.preprocess.volume_cache import CacheIndex, build_cache, cache_dir, ensure_cache
from medssl.store.fingerprint import fingerprint
from medssl.store.plan import make_plan
from medssl.transforms.spatial import resampled_shape
from tests.data.synthetic_store import Spec, phantom_array, write_store

SPECS = [
    Spec((40, 36, 24), (1.5, 1.5, 3.0), "CT", "p0", seed=1),
    Spec((40, 36, 24), (1.5, 1.5, 3.0), "MR", "p0", seed=2),
    Spec((30, 28, 20), (2.0, 2.0, 3.0), "CT", "p1", seed=3),
    Spec((40, 36, 24), (1.5, 1.5, 3.0), None, None, seed=4),
]


@pytest.fixture
def store(tmp_path):
    return write_store(tmp_path / "store", SPECS)


@pytest.fixture
def plan(store):
    return make_plan(fingerprint(store))


def snapshot(root):
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.iterdir()}


def test_cache_holds_each_planned_volume_normalised_and_resampled(store, plan):
    index = build_cache(store, plan, progress=False)
    assert plan.target_spacing == (1.5, 1.5, 3.0)
    assert [v.volume_id for v in index.volumes] == ["v000", "v001", "v002", "v003"]
    assert index.root == store / "cache" / plan.hash and (index.root / INDEX_FILE).is_file()
    ct = index.open(index.volumes[0])
    assert isinstance(ct, np.memmap) and ct.dtype == np.float16
    norm = plan.norm_for("CT")
    expected = ((np.clip(phantom_array(SPECS[0]), norm.lower, norm.upper) - norm.mean) / norm.std).astype(np.float16)
    assert np.array_equal(np.asarray(ct), expected)  # already at target spacing: no resampling
    mr = np.asarray(index.open(index.volumes[1]), dtype=np.float64)
    assert abs(mr.mean()) < 1e-2 and abs(mr.std() - 1) < 1e-2  # per-volume z-score
    coarse = index.volumes[2]
    assert coarse.shape == resampled_shape((30, 28, 20), (2.0, 2.0, 3.0), plan.target_spacing) == (40, 37, 20)
    assert coarse.spacing == pytest.approx((1.5, 28 * 2 / 37, 3.0), abs=1e-5)
    assert index.open(coarse).shape == coarse.shape
    assert (coarse.modality, coarse.patient) == ("CT", "p1")
    assert index.volumes[3].modality == "OT" and index.volumes[3].patient is None
    assert coarse.pad_value == pytest.approx(float(np.asarray(index.open(coarse)).min()))


def test_memory_mapped_values_equal_a_full_read(store, plan):
    index = build_cache(store, plan, progress=False)
    for volume in index.volumes:
        mapped = index.open(volume)
        assert np.array_equal(np.asarray(mapped[3:9, 2:7, 1:5]), np.load(index.root / volume.file)[3:9, 2:7, 1:5])


def test_second_build_writes_nothing(store, plan):
    first = build_cache(store, plan, progress=False)
    before = snapshot(first.root)
    second = build_cache(store, plan, progress=False)
    assert second == first
    assert snapshot(first.root) == before
    assert ensure_cache(store, plan) == first
    assert snapshot(first.root) == before


def test_a_killed_build_resumes_without_redoing_finished_volumes(store, plan):
    index = build_cache(store, plan, progress=False)
    (index.root / INDEX_FILE).unlink()  # killed before the index was written ...
    (index.root / "v002.npy").unlink()  # ... while v002 was in flight ...
    (index.root / "v002.json").unlink()
    (index.root / f".abc{TMP_MARK}.v002.npy").write_bytes(b"partial")  # ... leaving a temporary
    before = {k: v for k, v in snapshot(index.root).items() if not k.startswith("v002") and TMP_MARK not in k}
    resumed = build_cache(store, plan, progress=False)
    after = snapshot(index.root)
    assert resumed == index
    assert {k: after[k] for k in before if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}
    assert "v002.npy" in after and INDEX_FILE in after
    assert not [k for k in after if TMP_MARK in k]


def test_a_volume_added_to_the_store_is_cached_on_the_next_call(store, plan, tmp_path):
    index = build_cache(store, plan, progress=False)
    write_store(store, SPECS + [Spec((40, 36, 24), (1.5, 1.5, 3.0), "CT", "p2", seed=9)])  # rewrites v000..v003 rows, adds v004
    grown = ensure_cache(store, plan)
    assert [v.volume_id for v in grown.volumes] == ["v000", "v001", "v002", "v003", "v004"]
    assert grown.volumes[:4] == index.volumes


def test_a_reconverted_volume_is_cached_again(store, plan):
    index = build_cache(store, plan, progress=False)
    old = np.array(index.open(index.volumes[2]))
    before = snapshot(index.root)
    changed = SPECS[:2] + [dataclasses.replace(SPECS[2], seed=77)] + SPECS[3:]
    write_store(store, changed)  # v002 has new content and a new sha256 in the manifest
    rebuilt = ensure_cache(store, plan)
    after = snapshot(index.root)
    assert {k for k in before if k != ".lock" and before[k] != after[k]} == {"v002.json", "v002.npy", INDEX_FILE}
    assert rebuilt.volumes[2].sha256 != index.volumes[2].sha256
    assert not np.array_equal(np.asarray(rebuilt.open(rebuilt.volumes[2])), old)


def test_an_index_of_another_version_is_rebuilt_not_misread(store, plan):
    index = build_cache(store, plan, progress=False)
    (index.root / INDEX_FILE).write_text('{"version": 2, "plan_hash": "x", "dtype": "float16", "volumes": [{"volume_id": "v000"}]}')
    (index.root / "v001.json").write_text('{"volume_id": "v001"}')  # a sidecar without sha256
    assert CacheIndex.read(index.root) is None
    assert ensure_cache(store, plan) == index


def test_an_unreadable_volume_is_reported_and_retried(store, plan):
    (store / "volumes" / "v001.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    index = build_cache(store, plan, progress=False)
    assert index.failed == ("v001",)
    assert [v.volume_id for v in index.volumes] == ["v000", "v002", "v003"]
    assert ensure_cache(store, plan) == index  # accepted as complete
    again = build_cache(store, plan, progress=False)  # an explicit build tries again
    assert again.failed == ("v001",)


def test_other_ranks_wait_for_rank_0(store, plan, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert distributed_rank() == 1
    with pytest.raises(TimeoutError, match="rank 0"):
        ensure_cache(store, plan, timeout_s=0.2, poll_s=0.05)
    result = {}
    waiter = threading.Thread(target=lambda: result.setdefault("index", ensure_cache(store, plan, poll_s=0.05, timeout_s=60)))
    waiter.start()
    assert not (cache_dir(store, plan) / INDEX_FILE).exists()
    built = build_cache(store, plan, progress=False)  # what rank 0 does
    waiter.join(timeout=30)
    assert result["index"] == built


def test_parallel_build_in_worker_processes_and_float32(store, plan):
    plan32 = dataclasses.replace(plan, cache_dtype="float32")
    parallel = build_cache(store, plan32, workers=2, progress=False)
    serial = build_cache(store, plan, progress=False)
    assert parallel.root != serial.root and parallel.dtype == "float32"
    for a, b in zip(parallel.volumes, serial.volumes):
        assert dataclasses.replace(a, pad_value=0.0) == dataclasses.replace(b, pad_value=0.0)
        x32, x16 = np.asarray(parallel.open(a)), np.asarray(serial.open(b))
        assert x32.dtype == np.float32
        assert np.allclose(x32, x16.astype(np.float32), atol=4e-3, rtol=1e-3)
    assert CacheIndex.read(parallel.root) == parallel
