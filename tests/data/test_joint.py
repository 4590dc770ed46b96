"""Joint 2D/3D data: slice stacks from the 3D cache, the 2D image cache, the data module."""

from __future__ import annotations

import pytest
import torch

from medssl.data.joint import JointDataModule
from medssl.data.slices import slice_indices
from medssl.preprocess.image_cache import build_image_cache
from medssl.store.plan import Plan
from tests.data.joint_store import add_image, joint_store
from tests.data.synthetic_store import add_row


def module(store, **kw) -> JointDataModule:
    args = {
        "crop_size": (16, 16),
        "num_slices": 4,
        "batch_size": 2,
        "num_workers": 0,
        "val_fraction": 0.0,
        "progress": False,
        **kw,
    }
    dm = JointDataModule(str(store), **args)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def first_batch(dm: JointDataModule) -> dict:
    return next(iter(dm.train_dataloader()))


def test_a_batch_holds_slice_stacks_with_positions_and_image_crops(tmp_path):
    batch = first_batch(module(joint_store(tmp_path)))
    assert batch["slices"].shape == (2, 4, 1, 16, 16)
    assert batch["positions"].shape == (2, 4) and batch["slice_keys"].shape == (2,)
    assert (batch["positions"] >= 0).all() and (batch["positions"] <= 1).all()
    assert (batch["positions"].diff(dim=1) > 0).all()  # evenly spaced, increasing
    assert batch["images"].shape == (4, 1, 16, 16) and batch["image_keys"].shape == (4,)
    assert torch.isfinite(batch["slices"]).all() and torch.isfinite(batch["images"]).all()


def test_the_same_index_gives_the_same_stack(tmp_path):
    dm = module(joint_store(tmp_path))
    a, b = dm.train_set[3], dm.train_set[3]
    assert torch.equal(a["slices"], b["slices"]) and torch.equal(a["images"], b["images"])


def test_volumes_only_and_images_only_stores_work(tmp_path):
    only3d = first_batch(module(joint_store(tmp_path / "a", volumes=2, images=0)))
    assert "slices" in only3d and "images" not in only3d
    only2d = first_batch(module(joint_store(tmp_path / "b", volumes=0, images=2)))
    assert "images" in only2d and "slices" not in only2d
    assert Plan.load(tmp_path / "b").target_spacing[:2] == (0.5, 0.5)


@pytest.mark.parametrize("sampling", ["even", "consecutive"])
def test_slice_indices_stay_inside_and_increase(sampling):
    g = torch.Generator().manual_seed(0)
    idx = slice_indices(20, 5, sampling, g)
    assert idx.shape == (5,) and idx.min() >= 0 and idx.max() <= 19 and (idx.diff() >= 0).all()
    with pytest.raises(ValueError, match="sampling"):
        slice_indices(20, 5, "random", g)


def test_images_are_resampled_to_the_plans_in_plane_spacing(tmp_path):
    store = joint_store(tmp_path, volumes=1, images=0)
    add_image(store, "i000", shape=(60, 50), spacing=(0.5, 0.5))
    dm = module(store)
    index = build_image_cache(store, dm.plan, progress=False)
    image = index.images[0]
    assert image.spacing == pytest.approx(dm.plan.target_spacing[:2], rel=0.05)
    assert index.open(image).shape == image.shape


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="num_slices"):
        JointDataModule(str(tmp_path), num_slices=1)
    add_row(tmp_path, "x", ndim=4, shape=[2, 2, 2, 2], spacing=[1, 1, 1, 1])
    dm = JointDataModule(str(tmp_path), num_workers=0, progress=False)
    with pytest.raises(ValueError, match="no 2D image"):
        dm.prepare_data()
