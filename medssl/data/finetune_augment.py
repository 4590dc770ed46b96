"""Batched augmentation of labelled crops: one draw moves the image, its label map and its boxes together.

The image gets every step of the pipeline; the label map ``[B, *crop]`` only the spatial
steps (flips, quarter turns, affine warps), resampled with ``nearest``; boxes only flips
and quarter turns, which are exact on boxes (detection runs without affine warps).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from medssl.data.boxes import transform_boxes
from medssl.transforms.geometric import AffineWarp, Flip, Rotate90
from medssl.transforms.pipeline import AugmentConfig, BatchAugment, Composed
from medssl.types import BatchKey, TaskKind

SPATIAL_TWINS = (Flip, Rotate90, AffineWarp)


def finetune_augment(config: AugmentConfig, crop_size: tuple[int, ...], task: TaskKind) -> BatchAugment:
    """The pipeline for ``task``'s crops: detection drops the affine warp (boxes would stop being exact)."""
    if task == TaskKind.DETECTION:
        config = replace(config, affine_prob=0.0)
    return BatchAugment.from_config(config, crop_size)


def augment_labelled(batch: dict, augment: BatchAugment, generator: torch.Generator) -> dict:
    """``batch`` with ``image`` ``[B, 1, *crop]`` (and ``label`` ``[B, *crop]`` / ``targets``) augmented alike."""
    image = batch[BatchKey.IMAGE]
    twin = augment.sample(image.shape[0], generator)
    out = {**batch, BatchKey.IMAGE: twin(image)}
    spatial = Composed(tuple(t for t in twin.twins if isinstance(t, SPATIAL_TWINS)))
    if BatchKey.LABEL in batch:
        label = batch[BatchKey.LABEL]
        out[BatchKey.LABEL] = spatial(label[:, None].float(), "nearest")[:, 0].round().to(label.dtype)
    if BatchKey.TARGETS in batch:
        shape = tuple(image.shape[2:])
        targets = batch[BatchKey.TARGETS]
        moved = transform_boxes([t[BatchKey.BOXES] for t in targets], twin.twins, shape)
        out[BatchKey.TARGETS] = [{**t, BatchKey.BOXES: b} for t, b in zip(targets, moved)]
    return out
