"""Resampling, crops with boxes, base-crop grids, box overlaps and 2D slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl.transforms import (
    CropOrPad,
    RandCropd,
    Resampled,
    base_grid_crops,
    box_overlap_fraction,
    crop_box,
    grid_boxes,
    random_crops,
    random_slices,
    resample_to_spacing,
    resampled_shape,
)


def test_resampling_keeps_the_field_of_view():
    x = torch.randn(1, 40, 30, 10)
    out, reached = resample_to_spacing(x, (1.0, 1.0, 5.0), (2.0, 2.0, 2.5))
    assert out.shape == (1, 20, 15, 20)
    assert reached == (2.0, 2.0, 2.5)
    assert resampled_shape((33, 10, 10), (1.0, 1.0, 1.0), (2.0, 1.0, 1.0)) == (16, 10, 10)
    _, reached = resample_to_spacing(torch.randn(1, 33, 4, 4), (1.0, 1.0, 1.0), (2.0, 1.0, 1.0))
    assert reached[0] == pytest.approx(33 / 16)


def test_resampling_a_linear_ramp_stays_a_ramp_and_same_spacing_is_a_no_op():
    ramp = torch.arange(20, dtype=torch.float32).view(1, 20, 1, 1).expand(1, 20, 4, 4).contiguous()
    out, _ = resample_to_spacing(ramp, (1.0, 1.0, 1.0), (0.5, 1.0, 1.0))
    diffs = out[0, 1:-1, 0, 0].diff()
    assert torch.allclose(diffs, torch.full_like(diffs, 0.5), atol=1e-5)
    same, reached = resample_to_spacing(ramp, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    assert same is ramp and reached == (1.0, 1.0, 1.0)


def test_nearest_resampling_keeps_label_values():
    labels = torch.randint(0, 5, (1, 17, 13, 9), dtype=torch.uint8)
    out, _ = resample_to_spacing(labels, (1.0, 1.0, 3.0), (0.7, 0.7, 1.1), mode="nearest")
    assert out.dtype == torch.uint8
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())
    data = Resampled(["image", "label"], (2.0, 2.0, 2.0), modes={"label": "nearest"})({"image": labels.float(), "label": labels, "spacing": (1.0, 1.0, 1.0)})
    assert data["image"].shape == data["label"].shape == (1, 8, 6, 4)
    assert data["spacing"] == pytest.approx((17 / 8, 13 / 6, 9 / 4))


def test_crop_box_pads_outside_the_volume_and_reads_numpy_memory_maps(tmp_path):
    vol = np.arange(6 * 5 * 4, dtype=np.float16).reshape(1, 6, 5, 4)
    np.save(tmp_path / "v.npy", vol[0])
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")[None]
    out = crop_box(mapped, (-2, 1, 2), (4, 3, 4), pad_value=-9.0)
    assert out.dtype == torch.float32 and out.shape == (1, 4, 3, 4)
    assert torch.equal(out[:, 2:, :, :2], torch.from_numpy(vol[:, 0:2, 1:4, 2:4].astype(np.float32)))
    assert (out[:, :2] == -9).all() and (out[..., 2:] == -9).all()
    assert torch.equal(CropOrPad((2, 2, 2))(torch.from_numpy(vol)), torch.from_numpy(vol[:, 2:4, 1:3, 1:3]).float())


@pytest.mark.parametrize("shape", [(20, 18, 16), (10, 30, 5)])
def test_random_crop_content_matches_its_box(shape):
    vol = torch.randn(2, *shape)
    crops, boxes = random_crops(vol, 12, (8, 8, 8), torch.Generator().manual_seed(0), pad_value=-5.0)
    assert crops.shape == (12, 2, 8, 8, 8) and boxes.shape == (12, 6)
    for crop, box in zip(crops, boxes.tolist()):
        start, end = box[:3], box[3:]
        assert [e - s for s, e in zip(start, end)] == [8, 8, 8]
        inside = [slice(max(0, s), min(d, e)) for s, e, d in zip(start, end, shape)]
        local = [slice(i.start - s, i.stop - s) for i, s in zip(inside, start)]
        assert torch.equal(crop[(slice(None), *local)], vol[(slice(None), *inside)])
        for axis, (s, d) in enumerate(zip(start, shape)):
            if d >= 8:
                assert 0 <= s <= d - 8  # stays inside where it fits
            else:
                assert d - 8 <= s <= 0 and (crop == -5.0).any()


def test_rand_cropd_cuts_every_key_with_one_box():
    vol = torch.randn(1, 20, 20, 20)
    out = RandCropd(["image", "label"], (6, 6, 6))({"image": vol, "label": vol * 2}, torch.Generator().manual_seed(0))
    s = out["box"][:3].tolist()
    assert torch.equal(out["image"], vol[:, s[0]:s[0] + 6, s[1]:s[1] + 6, s[2]:s[2] + 6])
    assert torch.equal(out["label"], 2 * out["image"])


def test_base_grid_crops_tile_the_region():
    region = torch.randn(1, 32, 32, 16)
    crops, boxes = base_grid_crops(region, (2, 2))
    assert crops.shape == (4, 1, 16, 16, 16)
    assert boxes.tolist()[3] == [16, 16, 0, 32, 32, 16]
    rebuilt = torch.cat([torch.cat([crops[0], crops[1]], 2), torch.cat([crops[2], crops[3]], 2)], 1)
    assert torch.equal(rebuilt, region)
    resized, _ = base_grid_crops(region, (4, 4, 2), size=(16, 16, 16))
    assert resized.shape == (32, 1, 16, 16, 16)
    assert grid_boxes((10,), (3,)).tolist() == [[0, 3], [3, 7], [7, 10]]
    with pytest.raises(ValueError, match="grid"):
        base_grid_crops(region, (2, 2, 2, 2))


def test_box_overlap_fractions():
    base = grid_boxes((4, 4), (2, 2))  # four 2x2 tiles
    crops = torch.tensor([[0, 0, 2, 2], [1, 1, 3, 3], [1, 0, 3, 2], [8, 8, 9, 9]])
    overlap = box_overlap_fraction(crops, base)
    assert torch.allclose(overlap[0], torch.tensor([1.0, 0, 0, 0]))
    assert torch.allclose(overlap[1], torch.tensor([0.25, 0.25, 0.25, 0.25]))
    assert torch.allclose(overlap[2], torch.tensor([0.5, 0, 0.5, 0]))
    assert torch.equal(overlap[3], torch.zeros(4))
    assert torch.allclose(box_overlap_fraction(base, base), torch.eye(4))


def test_random_slices_are_slices_of_the_volume():
    vol = np.random.default_rng(0).standard_normal((1, 6, 7, 8)).astype(np.float32)
    for axis in (0, 1, 2):
        slices, index = random_slices(vol, 5, axis, torch.Generator().manual_seed(axis))
        for sl, i in zip(slices, index.tolist()):
            assert torch.equal(sl, torch.from_numpy(np.take(vol, i, axis=1 + axis)))
    assert random_slices(torch.from_numpy(vol), 3)[0].shape == (3, 1, 6, 7)
