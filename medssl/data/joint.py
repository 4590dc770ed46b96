"""The data module of joint 2D/3D pretraining: slice stacks of volumes and crops of 2D images.

Batch (``Joint2D3D``'s input): ``slices [B, S, 1, h, w]``, ``positions [B, S]``,
``slice_keys [B]`` when the store has volumes; ``images [B * images_per_item, 1, h, w]``,
``image_keys [B * images_per_item]`` when it has 2D images (a store with only one kind
gives only that part; every batch of a run has the same parts, so DDP ranks run the same
graph). Slices and images share the in-plane ``crop_size`` (default: the plan's
``crop_size_2d``). Volumes come from the volume cache (:mod:`medssl.preprocess.volume_cache`),
2D images from the 2D image cache (:mod:`medssl.preprocess.image_cache`), both memory-mapped; augmentation
runs in the method on the device. Train/validation split by patient pseudonym on each side;
the training sampler is a :class:`~medssl.data.sampler.StepSampler`, so a resumed run reads
what an uninterrupted one would. Plan, shared options and loaders: :mod:`medssl.data.crop_module`
(a store without 3D volumes plans from its 2D images).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medssl.data.crop_module import CropDataModule, LoaderOptions
from medssl.data.slices import SliceSampling, SliceStackDataset
from medssl.data.split import split_by_patient
from medssl.preprocess.image_cache import (
    ImageIndex,
    build_image_cache,
    ensure_image_cache,
    planned_images,
)
from medssl.preprocess.volume_cache import build_cache, ensure_cache, planned_volumes
from medssl.store.labels import read_split
from medssl.store.plan import load_or_make_plan
from medssl.transforms.rng import keyed_generator
from medssl.transforms.spatial import crop_box
from medssl.transforms.views import sample_crop_starts
from medssl.types import BatchKey

IMAGE_STREAM = 13  # a key that keeps image crops' draws apart from slice stacks' (seed, item)


class ImageCropDataset(Dataset):
    """``per_item`` random crops ``[1, h, w]`` of one cached 2D image per item, with keys."""

    def __init__(
        self,
        index: ImageIndex,
        images: Sequence[int],
        crop_size: Sequence[int],
        per_item: int = 2,
        fixed: bool = False,
        seed: int = 0,
    ) -> None:
        if not images or per_item < 1 or len(crop_size) != 2:
            raise ValueError(
                f"an image crop dataset needs images, per_item >= 1 and a 2-sided crop; got {len(images)}, {per_item}, {tuple(crop_size)}"
            )
        self.index, self.images, self.crop_size = (
            index,
            list(images),
            tuple(int(s) for s in crop_size),
        )
        self.per_item, self.fixed, self.seed = per_item, fixed, seed
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int) -> dict:
        i = self.images[item % len(self.images)]
        image = self.index.images[i]
        if i not in self._maps:
            self._maps[i] = self.index.open(image)
        array = self._maps[i][None]  # [1, X, Y]
        g = keyed_generator(self.seed, IMAGE_STREAM, item)
        starts = sample_crop_starts(array.shape[1:], self.crop_size, self.per_item, g)
        crops = torch.stack(
            [crop_box(array, s.tolist(), self.crop_size, image.pad_value) for s in starts]
        )
        return {
            BatchKey.IMAGES: crops,
            BatchKey.IMAGE_KEYS: torch.randint(0, 2**40, (self.per_item,), generator=g),
        }


class JointDataset(Dataset):
    """Item ``i``: stack ``i`` of the slice set and crops of image ``i`` (each set wraps around)."""

    def __init__(
        self, stacks: SliceStackDataset | None, images: ImageCropDataset | None, length: int
    ) -> None:
        if stacks is None and images is None:
            raise ValueError("a joint dataset needs volumes or 2D images")
        self.stacks, self.images, self.length = stacks, images, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: int) -> dict:
        out = {}
        if self.stacks is not None:
            stack = self.stacks[item]
            out.update({
                BatchKey.SLICES: stack[BatchKey.SLICES],
                BatchKey.POSITIONS: stack[BatchKey.POSITIONS],
                BatchKey.SLICE_KEYS: torch.tensor(stack[BatchKey.KEY]),
            })
        if self.images is not None:
            out.update(self.images[item])
        return out


def collate_joint(items: list[dict]) -> dict:
    """Stacks are stacked ``[B, S, ...]``; image crops concatenated ``[B * per_item, ...]``."""
    batch = {}
    for key in (BatchKey.SLICES, BatchKey.POSITIONS, BatchKey.SLICE_KEYS):
        if key in items[0]:
            batch[key] = torch.stack([it[key] for it in items])
    for key in (BatchKey.IMAGES, BatchKey.IMAGE_KEYS):
        if key in items[0]:
            batch[key] = torch.cat([it[key] for it in items])
    return batch


class JointDataModule(CropDataModule):
    """Slice stacks of the store's volumes + crops of its 2D images (module doc).

    Args:
        store: the store folder.
        crop_size: in-plane crop ``(h, w)`` of slices and images (default: plan ``crop_size_2d``).
        num_slices: S slices per stack (>= 2). slice_axis: 0, 1 or 2 (2: axial).
        slice_sampling: ``"even"`` (spread over the depth) or ``"consecutive"``.
        images_per_item: 2D image crops per batch item.
        batch_size: items per batch (volumes per batch). num_workers: loader processes.
        val_fraction, seed: patient split and the data's draws.
        samples_per_epoch: items per epoch (default: the larger of volumes and images).
        cache_workers, progress: of the cache builds.
        pin_memory, prefetch_factor: of the loaders.
    """

    def __init__(
        self,
        store: str,
        crop_size: tuple[int, int] | None = None,
        num_slices: int = 8,
        slice_axis: int = 2,
        slice_sampling: SliceSampling = "even",
        images_per_item: int = 2,
        batch_size: int = 4,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        cache_workers: int = 1,
        pin_memory: bool = True,
        prefetch_factor: int = 4,
        progress: bool = True,
    ) -> None:
        if images_per_item < 1 or num_slices < 2 or slice_axis not in (0, 1, 2):
            raise ValueError(
                f"images_per_item >= 1, num_slices >= 2, slice_axis 0-2; got {images_per_item}, {num_slices}, {slice_axis}"
            )
        options = LoaderOptions.of(locals())
        super().__init__(store, crop_size, options)
        self.num_slices, self.slice_axis = num_slices, slice_axis
        self.slice_sampling, self.images_per_item = slice_sampling, images_per_item

    def prepare_data(self) -> None:
        o = self.options
        plan = load_or_make_plan(self.store, from_images=True)
        if planned_volumes(self.store, plan):
            build_cache(self.store, plan, o.cache_workers, o.progress)
        if planned_images(self.store):
            build_image_cache(self.store, plan, o.cache_workers, o.progress)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        o = self.options
        self.plan = load_or_make_plan(self.store, from_images=True)
        volumes = (
            ensure_cache(self.store, self.plan, o.cache_workers, o.progress)
            if planned_volumes(self.store, self.plan)
            else None
        )
        images = (
            ensure_image_cache(self.store, self.plan, o.cache_workers, o.progress)
            if planned_images(self.store)
            else None
        )
        has_volumes, has_images = bool(volumes and volumes.volumes), bool(images and images.images)
        if not (has_volumes or has_images):
            raise ValueError(
                f"store {self.store}: nothing to pretrain on (no cached 3D volume of at least {self.plan.min_slices} slices, no cached 2D image)"
            )
        crop = self.crop_size or tuple(self.plan.crop_size_2d)
        sets = {}
        for split in ("train", "val"):
            sets[split] = {"stacks": None, "images": None, "n": 0}
        if has_volumes:
            train, val = split_by_patient(volumes.volumes, o.val_fraction, o.seed, read_split(self.store))
            for split, ids in (("train", train), ("val", val)):
                if ids:
                    sets[split]["stacks"] = SliceStackDataset(
                        volumes,
                        ids,
                        crop,
                        self.num_slices,
                        self.slice_axis,
                        self.slice_sampling,
                        fixed=split == "val",
                        seed=o.seed,
                    )
                    sets[split]["n"] = max(sets[split]["n"], len(ids))
        if has_images:
            train, val = split_by_patient(images.images, o.val_fraction, o.seed, read_split(self.store))
            for split, ids in (("train", train), ("val", val)):
                if ids:
                    sets[split]["images"] = ImageCropDataset(
                        images,
                        ids,
                        crop,
                        self.images_per_item,
                        fixed=split == "val",
                        seed=o.seed,
                    )
                    sets[split]["n"] = max(sets[split]["n"], len(ids))
        t = sets["train"]
        self.train_set = JointDataset(t["stacks"], t["images"], o.samples_per_epoch or t["n"])
        v = sets["val"]  # validation only when it has every part training has
        if (
            v["n"]
            and (v["stacks"] is None) == (t["stacks"] is None)
            and (v["images"] is None) == (t["images"] is None)
        ):
            self.val_set = JointDataset(v["stacks"], v["images"], v["n"])

    def collate_fn(self) -> Callable[[list[dict]], dict]:
        return collate_joint
