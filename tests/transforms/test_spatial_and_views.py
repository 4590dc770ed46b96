"""Resampling, crops with boxes, base-crop grids, random and random resized boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl.transforms import (
    CropOrPad,
    base_grid,
    crop_box,
    crop_boxes,
    grid_boxes,
    random_boxes,
    random_resized_boxes,
    resample_to_spacing,
    resampled_shape,
    sample_crop_starts,
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
    # the data modules' crop path: starts from sample_crop_starts, cut (and padded) by crop_box
    vol = torch.randn(2, *shape)
    starts = sample_crop_starts(shape, (8, 8, 8), 12, torch.Generator().manual_seed(0))
    assert starts.shape == (12, 3)
    for start in starts.tolist():
        crop, end = crop_box(vol, start, (8, 8, 8), pad_value=-5.0), [s + 8 for s in start]
        assert crop.shape == (2, 8, 8, 8)
        inside = [slice(max(0, s), min(d, e)) for s, e, d in zip(start, end, shape)]
        local = [slice(i.start - s, i.stop - s) for i, s in zip(inside, start)]
        assert torch.equal(crop[(slice(None), *local)], vol[(slice(None), *inside)])
        for axis, (s, d) in enumerate(zip(start, shape)):
            if d >= 8:
                assert 0 <= s <= d - 8  # stays inside where it fits
            else:
                assert d - 8 <= s <= 0 and (crop == -5.0).any()


def test_base_grid_crops_tile_the_region():
    region = torch.randn(1, 1, 32, 32, 16)
    boxes = base_grid((32, 32, 16), 2, 2)
    crops = crop_boxes(region, boxes)[0]
    assert crops.shape == (4, 1, 16, 16, 16)
    assert boxes.tolist()[3] == [16, 16, 0, 32, 32, 16]
    rebuilt = torch.cat([torch.cat([crops[0], crops[1]], 2), torch.cat([crops[2], crops[3]], 2)], 1)
    assert torch.equal(rebuilt, region[0])
    resized = crop_boxes(region, grid_boxes((32, 32, 16), (4, 4, 2)), size=(16, 16, 16))[0]
    assert resized.shape == (32, 1, 16, 16, 16)
    assert grid_boxes((10,), (3,)).tolist() == [[0, 3], [3, 7], [7, 10]]
    with pytest.raises(ValueError, match="grid"):
        base_grid((32, 32, 16), 2, 4)


def test_random_boxes_lie_inside_the_region_and_crops_match_them():
    g = torch.Generator().manual_seed(0)
    region = torch.randn(2, 1, 12, 10, 8)
    boxes = random_boxes((12, 10, 8), (4, 5, 8), 2, 6, g)  # [B, N, 6]
    assert boxes.shape == (2, 6, 6) and (boxes[..., :3] >= 0).all()
    assert (boxes[..., 3:] - boxes[..., :3] == torch.tensor([4, 5, 8])).all()
    crops = crop_boxes(region, boxes)
    lo = boxes[1, 2].tolist()
    assert torch.equal(crops[1, 2], region[1, :, lo[0] : lo[3], lo[1] : lo[4], lo[2] : lo[5]])
    with pytest.raises(ValueError, match="does not fit"):
        random_boxes((12, 10, 8), (13, 5, 8), 1, 1, g)


def test_random_resized_boxes_cover_a_fraction_of_the_region_in_its_aspect():
    boxes = random_resized_boxes((40, 20), (0.25, 0.25), 5, torch.Generator().manual_seed(0))
    sides = boxes[:, 2:] - boxes[:, :2]
    assert (sides == torch.tensor([20, 10])).all()  # a quarter of the area, same aspect
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= torch.tensor([40, 20])).all()
    with pytest.raises(ValueError, match="scale range"):
        random_resized_boxes((40, 20), (0.0, 0.5), 1, torch.Generator())
