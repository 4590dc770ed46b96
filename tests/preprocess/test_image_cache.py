"""The 2D image cache: oversized images refused with a reason, a killed build resumed."""

from __future__ import annotations

import json

from medssl.preprocess.image_cache import build_image_cache, image_cache_dir
from medssl.store.plan import plan_for_images
from tests.data.joint_store import joint_store
from tests.data.synthetic_store import add_row


def test_an_image_with_a_huge_header_dimension_is_refused_with_a_reason(tmp_path, caplog):
    store = joint_store(tmp_path, volumes=0, images=1)
    add_row(
        store,
        "i999",
        ndim=2,
        shape=[100_000, 100_000],
        spacing=[0.1, 0.1],
        modality="DX",
        patient="z",
    )
    plan = plan_for_images(store)
    with caplog.at_level("WARNING"):
        index = build_image_cache(store, plan, progress=False)
    assert index.failed == ("i999",) and [i.volume_id for i in index.images] == ["i000"]
    assert "pixels" in caplog.text


def test_a_killed_image_cache_build_resumes_without_redoing_done_images(tmp_path):
    store = joint_store(tmp_path, volumes=0, images=3)
    plan = plan_for_images(store)
    build_image_cache(store, plan, progress=False)
    root = image_cache_dir(store, plan)
    # as if killed after the first image: no index, later images never written
    (root / "index.json").unlink()
    for vid in ("i001", "i002"):
        (root / f"{vid}.json").unlink()
    done_before = (root / "i000.npy").stat().st_mtime_ns
    index = build_image_cache(store, plan, progress=False)
    assert [i.volume_id for i in index.images] == ["i000", "i001", "i002"]
    assert (root / "i000.npy").stat().st_mtime_ns == done_before
    assert json.loads((root / "index.json").read_text())["failed"] == []
