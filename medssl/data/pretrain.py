"""LightningDataModules for pretraining: random 3D crops (:class:`PretrainDataModule`) or 2D
slice crops (:class:`PretrainSliceDataModule`) from the store's preprocessing cache.

``prepare_data`` (global rank 0 only) makes ``STORE/plan.json`` if missing and builds the
cache; ``setup`` (every rank) waits for the cache and splits by patient. CPU workers only
read crops from memory maps; augmentation runs batched where ``augment_on`` says:
``"device"`` after the batch reaches the accelerator (``on_after_batch_transfer``),
``"loader"`` in the worker processes, ``"auto"`` = device with CUDA, loader without,
``"none"`` = off. Batches: see :mod:`medssl.data.crops`. The options, plan and loaders they
share with the joint module: :mod:`medssl.data.crop_module`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch

from medssl.data.crop_module import CropDataModule, LoaderOptions
from medssl.data.crops import CropCollate, CropDataset, make_views
from medssl.data.split import split_by_patient
from medssl.preprocess.volume_cache import CacheIndex, build_cache, ensure_cache
from medssl.store.labels import read_split
from medssl.store.plan import Plan, load_or_make_plan
from medssl.transforms.pipeline import AugmentConfig, BatchAugment
from medssl.types import BatchKey

AugmentOn = Literal["auto", "device", "loader", "none"]  # where augmentation runs (module doc)
AUGMENT_ON = get_args(AugmentOn)
DEFAULT_AUGMENT = AugmentConfig()


class _AugmentedCropModule(CropDataModule):
    """What the 3D and 2D crop modules add to :class:`~medssl.data.crop_module.CropDataModule`
    (crops per volume, views, where augmentation runs); each public class states its own
    typed signature and passes everything here by keyword."""

    def __init__(
        self,
        store: str,
        crop_size: Sequence[int] | None,
        options: LoaderOptions,
        *,
        slice_axis: int | None,
        crops_per_volume: int,
        views: int,
        augment: AugmentConfig,
        augment_on: AugmentOn,
    ) -> None:
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on '{augment_on}': expected one of {AUGMENT_ON}")
        if views < 0:
            raise ValueError(f"views {views}: expected >= 0 (0: augment image in place)")
        super().__init__(store, crop_size, options)
        self.slice_axis, self.crops_per_volume, self.views = slice_axis, crops_per_volume, views
        self.augment_config, self.augment_on = augment, augment_on
        self.index: CacheIndex | None = None
        self.augment: BatchAugment | None = None

    # stages -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        o = self.options
        build_cache(self.store, load_or_make_plan(self.store), o.cache_workers, o.progress)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        o = self.options
        self.plan = Plan.load(self.store)
        self.index = ensure_cache(self.store, self.plan, o.cache_workers, o.progress)
        if not self.index.volumes:
            raise ValueError(f"store {self.store}: no volume to pretrain on (the plan selects 3D volumes of at least {self.plan.min_slices} slices)")
        crop = self.crop_size or self.default_crop_size(self.plan)
        self.augment = None if self.augment_on == "none" else BatchAugment.from_config(self.augment_config, crop)
        train, val = split_by_patient(self.index.volumes, o.val_fraction, o.seed, read_split(self.store))
        common = {"crop_size": crop, "crops_per_volume": self.crops_per_volume, "slice_axis": self.slice_axis, "seed": o.seed}
        self.train_set = CropDataset(self.index, train, length=o.samples_per_epoch, **common)
        self.val_set = CropDataset(self.index, val, fixed=True, **common) if val else None

    def default_crop_size(self, plan: Plan) -> tuple[int, ...]:
        return plan.crop_size

    # loaders ------------------------------------------------------------------------------
    def _augment_in_loader(self) -> bool:
        return self.augment is not None and (self.augment_on == "loader" or (self.augment_on == "auto" and not torch.cuda.is_available()))

    def collate_fn(self) -> Callable[[list[dict]], dict]:
        return CropCollate(self.augment if self._augment_in_loader() else None, self.views)

    # augmentation on the device -----------------------------------------------------------
    def augment_batch(self, batch: dict) -> dict:
        """Apply the batched augmentation to a collated batch on its device (idempotent: a
        batch augmented in the loader carries no ``seed`` and passes through)."""
        if BatchKey.SEED not in batch:
            return batch
        batch = dict(batch)
        generator = torch.Generator().manual_seed(int(batch.pop(BatchKey.SEED)))
        return make_views(batch, self.augment, self.views, generator)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        return self.augment_batch(batch)


class PretrainDataModule(_AugmentedCropModule):
    """Random 3D crops ``[N, 1, *crop_size]`` of the cached store volumes, N = batch_size × crops_per_volume.

    ``crop_size`` (voxels at the plan's spacing) defaults to the plan's. ``views``: augmented
    copies per batch under ``"views"`` (0: augment ``image`` in place). ``samples_per_epoch``:
    volumes drawn per epoch (default: each training volume once).
    """

    def __init__(
        self,
        store: str,
        crop_size: tuple[int, int, int] | None = None,
        crops_per_volume: int = 2,
        batch_size: int = 2,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        seed: int = 0,
        views: int = 2,
        samples_per_epoch: int | None = None,
        augment: AugmentConfig = DEFAULT_AUGMENT,
        augment_on: AugmentOn = "auto",
        cache_workers: int = 1,
        pin_memory: bool = True,
        prefetch_factor: int = 4,
        progress: bool = True,
    ) -> None:
        options = LoaderOptions.of(locals())
        super().__init__(
            store, crop_size, options, slice_axis=None, crops_per_volume=crops_per_volume,
            views=views, augment=augment, augment_on=augment_on,
        )  # fmt: skip


class PretrainSliceDataModule(_AugmentedCropModule):
    """2D crops ``[N, 1, *crop_size]`` of slices across ``slice_axis`` (2: axial) of the cached volumes.

    ``crop_size`` (in-plane voxels) defaults to the plan's ``crop_size_2d``; the rest as
    :class:`PretrainDataModule`; boxes stay 3D (depth 1 across the slice axis).
    """

    def __init__(
        self,
        store: str,
        crop_size: tuple[int, int] | None = None,
        slice_axis: int = 2,
        crops_per_volume: int = 8,
        batch_size: int = 4,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        seed: int = 0,
        views: int = 2,
        samples_per_epoch: int | None = None,
        augment: AugmentConfig = DEFAULT_AUGMENT,
        augment_on: AugmentOn = "auto",
        cache_workers: int = 1,
        pin_memory: bool = True,
        prefetch_factor: int = 4,
        progress: bool = True,
    ) -> None:
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis {slice_axis}: expected 0, 1 or 2")
        options = LoaderOptions.of(locals())
        super().__init__(
            store, crop_size, options, slice_axis=slice_axis, crops_per_volume=crops_per_volume,
            views=views, augment=augment, augment_on=augment_on,
        )  # fmt: skip

    def default_crop_size(self, plan: Plan) -> tuple[int, ...]:
        if self.slice_axis == 2:
            return plan.crop_size_2d
        return tuple(s for a, s in enumerate(plan.crop_size) if a != self.slice_axis)


def crop_shapes(module: _AugmentedCropModule) -> Sequence[int]:
    """The crop size a set-up module samples (for models that need it at construction)."""
    if module.train_set is None:
        raise RuntimeError("call setup() first")
    return module.train_set.crop_size
