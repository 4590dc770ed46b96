"""Boxes: components of label maps, clipping into crops, and flips/quarter turns that match the voxels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl.data.boxes import boxes_in_crop, transform_boxes
from medssl.data.finetune_augment import augment_labelled, finetune_augment
from medssl.preprocess.geometry import component_boxes
from medssl.transforms.pipeline import AugmentConfig

ONLY_GEOMETRY = AugmentConfig(flip_prob=0.5, rot90_prob=0.7, affine_prob=0.0, intensity_prob=0.0, gamma_prob=0.0, noise_prob=0.0, blur_prob=0.0)


def mask_box(mask: torch.Tensor) -> list[float]:
    where = mask.nonzero()
    return [*where.min(0).values.tolist(), *(where.max(0).values + 1).tolist()]


def test_component_boxes_find_each_blob_of_each_value():
    labels = np.zeros((12, 10, 8), dtype=np.uint8)
    labels[1:3, 2:5, 0:2] = 7
    labels[8:11, 6:9, 4:8] = 7
    labels[5:6, 0:1, 3:4] = 3
    boxes, classes = component_boxes(labels, [3, 7, 9])
    assert classes.tolist() == [0, 1, 1]
    assert boxes.tolist() == [[5, 0, 3, 6, 1, 4], [1, 2, 0, 3, 5, 2], [8, 6, 4, 11, 9, 8]]
    none, none_classes = component_boxes(labels, [9])
    assert none.shape == (0, 6) and none_classes.shape == (0,)


def test_boxes_are_clipped_to_the_crop_and_dropped_below_half():
    boxes = np.array([[2, 2, 2, 6, 6, 6], [9, 0, 0, 13, 4, 4], [11, 0, 0, 15, 4, 4], [20, 20, 20, 22, 22, 22]], dtype=np.float32)
    inside, classes = boxes_in_crop(boxes, np.array([0, 1, 2, 3]), start=(0, 0, 0), size=(12, 12, 12))
    # box 1 keeps 3/4 of its volume, box 2 1/4 (dropped), box 3 none
    assert classes.tolist() == [0, 1]
    assert inside.tolist() == [[2, 2, 2, 6, 6, 6], [9, 0, 0, 12, 4, 4]]
    moved, _ = boxes_in_crop(boxes[:1], np.array([0]), start=(1, -2, 2), size=(8, 8, 8))
    assert moved.tolist() == [[1, 4, 0, 5, 8, 4]]
    with pytest.raises(ValueError, match="boxes"):
        boxes_in_crop(boxes[:, :4], np.array([0, 1, 2, 3]), (0, 0, 0), (4, 4, 4))


@pytest.mark.parametrize("crop", [(16, 16, 16), (16, 16, 8), (12, 12)])
def test_augmented_boxes_bound_the_augmented_voxels(crop):
    torch.manual_seed(0)
    b = 8
    boxes = []
    mask = torch.zeros(b, *crop, dtype=torch.long)
    for i in range(b):
        lo = [int(torch.randint(0, n - 4, (1,))) for n in crop]
        hi = [lo_ + int(torch.randint(2, 5, (1,))) for lo_ in lo]
        mask[(i, *[slice(a, c) for a, c in zip(lo, hi)])] = 1
        boxes.append(torch.tensor([lo + hi], dtype=torch.float32))
    batch = {"image": mask[:, None].float(), "label": mask, "targets": [{"boxes": x, "labels": torch.zeros(1, dtype=torch.long)} for x in boxes]}
    augment = finetune_augment(ONLY_GEOMETRY, crop, "detection")
    for seed in range(4):
        out = augment_labelled(batch, augment, torch.Generator().manual_seed(seed))
        assert torch.equal(out["image"][:, 0].long(), out["label"])  # image and label moved alike
        for i in range(b):
            assert out["targets"][i]["boxes"][0].tolist() == mask_box(out["label"][i])


def test_detection_augmentation_never_warps():
    augment = finetune_augment(AugmentConfig(affine_prob=1.0), (8, 8, 8), "detection")
    assert not any(type(t).__name__ == "RandAffine" for t in augment.transforms)
    assert any(type(t).__name__ == "RandAffine" for t in finetune_augment(AugmentConfig(affine_prob=1.0), (8, 8, 8), "segmentation").transforms)


def test_transform_boxes_leaves_empty_sets_alone():
    augment = finetune_augment(ONLY_GEOMETRY, (8, 8, 8), "detection")
    twin = augment.sample(2, torch.Generator().manual_seed(1))
    out = transform_boxes([torch.zeros(0, 6), torch.zeros(0, 6)], twin.twins, (8, 8, 8))
    assert all(x.shape == (0, 6) for x in out)
