"""Crops of cached volumes for pretraining: random 3D crops or 2D slice crops, read by memory map.

An item is ``crops_per_volume`` crops of one volume; :class:`CropCollate` concatenates
items into a batch ``{"image": [N, 1, *crop], "box": [N, 2S], "volume": [N], "body": [N, 3],
"seed": int}`` with N = batch_size × crops_per_volume. ``box`` is in cached-volume voxels
(3D, even for 2D slices: the slice is the box of depth 1); ``volume`` indexes
``CacheIndex.volumes``; ``body`` is the crop centre in normalised body coordinates (0..1 per
axis inside the volume's body box, :func:`body_coordinates`; outside the body it falls
outside 0..1); ``seed`` seeds the batch's augmentation, wherever that runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medssl.preprocess.volume_cache import CacheIndex
from medssl.transforms.pipeline import BatchAugment
from medssl.transforms.rng import derive_seed, keyed_generator
from medssl.transforms.spatial import box_of, crop_box
from medssl.transforms.views import sample_crop_starts
from medssl.types import BatchKey


def body_coordinates(boxes: torch.Tensor, body_box: Sequence[float]) -> torch.Tensor:
    """Crop centres ``[N, 3]`` in body coordinates: ``(centre - lo) / (hi - lo)`` per axis.

    ``boxes``: ``[N, 6]`` crop boxes ``(start..., end...)`` in cached voxels; ``body_box``:
    ``(lo..., hi...)`` of :attr:`~medssl.preprocess.volume_cache.CachedVolume.body_box`.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 6 or len(body_box) != 6:
        raise ValueError(f"boxes must be [N, 6] and body_box 6 numbers, got {tuple(boxes.shape)} and {len(body_box)}")
    body = torch.tensor([float(b) for b in body_box], dtype=torch.float32)
    centre = (boxes[:, :3] + boxes[:, 3:]).float() / 2
    return (centre - body[:3]) / (body[3:] - body[:3]).clamp(min=1.0)


class CropDataset(Dataset):
    """``crops_per_volume`` random crops of ``crop_size`` per item, one volume per item.

    ``slice_axis``: make 2D crops — ``crop_size`` is then in-plane (2 sides) and each crop
    is one slice across that axis (2: axial). ``length``: items per epoch (default: one
    per volume). ``fixed``: every epoch the same crops (validation).
    """

    def __init__(
        self,
        index: CacheIndex,
        volumes: Sequence[int],
        crop_size: Sequence[int],
        crops_per_volume: int = 2,
        length: int | None = None,
        slice_axis: int | None = None,
        fixed: bool = False,
        seed: int = 0,
    ) -> None:
        if not volumes:
            raise ValueError("a crop dataset needs at least one volume")
        if crops_per_volume < 1:
            raise ValueError(f"crops_per_volume {crops_per_volume}: expected at least 1")
        expected = 2 if slice_axis is not None else 3
        if len(crop_size) != expected:
            raise ValueError(f"crop_size {tuple(crop_size)}: expected {expected} sides")
        self.index, self.volumes = index, list(volumes)
        self.crop_size = tuple(int(s) for s in crop_size)
        self.read_size = list(self.crop_size)
        if slice_axis is not None:
            self.read_size.insert(slice_axis, 1)
        self.crops_per_volume, self.slice_axis, self.fixed, self.seed = crops_per_volume, slice_axis, fixed, seed
        self.length = len(self.volumes) if length is None else int(length)
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def _open(self, i: int) -> np.ndarray:
        if i not in self._maps:  # per process: a worker maps only what it reads
            self._maps[i] = self.index.open(self.index.volumes[i])
        return self._maps[i]

    def generator(self, item: int) -> torch.Generator:
        """Seeded by (seed, item): the same index gives the same crops in any worker, after any
        resume. Training indices from :class:`~medssl.data.sampler.StepSampler` carry the epoch
        (``epoch * length + item``), so each epoch draws new crops; validation (``fixed``)
        indices repeat, so its crops do too."""
        return keyed_generator(self.seed, item)

    def __getitem__(self, item: int) -> dict:
        i = self.volumes[(item % self.length) % len(self.volumes)]
        volume = self.index.volumes[i]
        array = self._open(i)[None]  # [1, X, Y, Z], still unread
        g = self.generator(item)
        starts = sample_crop_starts(array.shape[1:], self.read_size, self.crops_per_volume, g)
        crops = [crop_box(array, s.tolist(), self.read_size, volume.pad_value) for s in starts]
        image = torch.stack(crops)
        if self.slice_axis is not None:
            image = image.squeeze(2 + self.slice_axis)
        boxes = torch.tensor([box_of(s.tolist(), self.read_size) for s in starts], dtype=torch.long)
        seed = int(torch.randint(0, 2**62, (1,), generator=g))
        volumes = torch.full((len(crops),), i, dtype=torch.long)
        return {
            BatchKey.IMAGE: image,
            BatchKey.BOX: boxes,
            BatchKey.VOLUME: volumes,
            BatchKey.BODY: body_coordinates(boxes, volume.body_box),
            BatchKey.SEED: seed,
        }


def make_views(batch: dict, augment: BatchAugment | None, views: int, generator: torch.Generator) -> dict:
    """Augment a batch where it is (loader worker or device).

    ``views == 0``: ``image`` is replaced by its augmented self. ``views >= 1``: ``views``
    (a list of ``views`` tensors ``[N, 1, *crop]``) holds independently augmented copies and
    ``image`` stays as cropped.
    """
    image = batch[BatchKey.IMAGE]
    if views == 0:
        return {**batch, BatchKey.IMAGE: augment(image, generator) if augment is not None else image}
    copies = [augment(image, generator) if augment is not None else image.clone() for _ in range(views)]
    return {**batch, BatchKey.VIEWS: copies}


CONCATENATED = (BatchKey.IMAGE, BatchKey.BOX, BatchKey.VOLUME, BatchKey.BODY)  # per-crop keys


class CropCollate:
    """Concatenates items along the crop axis; when ``augment`` is given, augments here (in the worker)."""

    def __init__(self, augment: BatchAugment | None = None, views: int = 0) -> None:
        self.augment, self.views = augment, views

    def __call__(self, items: list[dict]) -> dict:
        batch = {key: torch.cat([item[key] for item in items]) for key in CONCATENATED}
        batch[BatchKey.SEED] = derive_seed(*(item[BatchKey.SEED] for item in items))
        if self.augment is not None:
            generator = torch.Generator().manual_seed(batch.pop(BatchKey.SEED))
            batch = make_views(batch, self.augment, self.views, generator)
        return batch
