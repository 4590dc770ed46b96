"""Multi-crop: the plan of sizes, the order of the draws, keyed boxes, no augmentation."""

from __future__ import annotations

import pytest
import torch

from medssl.transforms import (
    AugmentConfig,
    BatchAugment,
    MultiCrop,
    crop_boxes,
    random_resized_boxes,
)


def reference_crops(regions, generator, plan, config):
    """The loop SwAV ran before multi-crop had one home: per crop, boxes then augmentation."""
    shape, crops = tuple(regions.shape[2:]), []
    for size, scale in plan:
        boxes = random_resized_boxes(shape, scale, regions.shape[0], generator)[:, None]
        crop = crop_boxes(regions, boxes, size)[:, 0]
        crops.append(BatchAugment.from_config(config, size)(crop, generator))
    return crops


def test_plan_defaults_to_the_region_and_half_of_it():
    crop = MultiCrop(None, None, 3, (0.4, 1.0), (0.05, 0.4), None)
    assert crop.plan((16, 9, 8)) == [((16, 9, 8), (0.4, 1.0))] * 2 + [((8, 4, 4), (0.05, 0.4))] * 3
    fixed = MultiCrop([12, 12], [6, 6], 0, [0.5, 1.0], [0.1, 0.2], None)
    assert fixed.plan((16, 16)) == [((12, 12), (0.5, 1.0))] * 2
    with pytest.raises(ValueError, match="num_local"):
        MultiCrop(None, None, -1, (0.4, 1.0), (0.05, 0.4), None)


@pytest.mark.parametrize("shape", [(16, 16, 8), (20, 12)])
def test_crops_draw_boxes_then_augmentation_per_crop_from_one_generator(shape):
    regions = torch.randn(3, 1, *shape, generator=torch.Generator().manual_seed(1))
    config = AugmentConfig(affine_prob=0.5, blur_prob=0.5)
    crop = MultiCrop(None, None, 2, (0.4, 1.0), (0.05, 0.4), config)
    crops = crop(regions, torch.Generator().manual_seed(5))
    expected = reference_crops(regions, torch.Generator().manual_seed(5), crop.plan(shape), config)
    assert [c.shape for c in crops] == [e.shape for e in expected]
    assert all(torch.equal(c, e) for c, e in zip(crops, expected))
    half = tuple(s // 2 for s in shape)
    assert [tuple(c.shape[2:]) for c in crops] == [shape, shape, half, half]


def test_given_boxes_are_cut_and_nothing_is_augmented_without_a_config():
    regions = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    seen = []

    def draw_boxes(shape, scale, index):
        seen.append((shape, scale, index))
        return torch.tensor([[0, 0, 4, 4], [4, 4, 8, 8]])

    crops = MultiCrop([4, 4], [2, 2], 1, (0.4, 1.0), (0.05, 0.4), None)(
        regions, torch.Generator(), draw_boxes
    )
    assert seen == [((8, 8), (0.4, 1.0), 0), ((8, 8), (0.4, 1.0), 1), ((8, 8), (0.05, 0.4), 2)]
    assert torch.equal(crops[0][0], regions[0, :, :4, :4]) and torch.equal(crops[1][1], regions[1, :, 4:, 4:])
    assert crops[2].shape == (2, 1, 2, 2)
