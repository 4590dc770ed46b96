"""LightningDataModules for pretraining: random 3D crops (:class:`PretrainDataModule`) or 2D
slice crops (:class:`PretrainSliceDataModule`) from the store's preprocessing cache.

``prepare_data`` (global rank 0 only) makes ``STORE/plan.json`` if missing and builds the
cache; ``setup`` (every rank) waits for the cache and splits by patient. CPU workers only
read crops from memory maps; augmentation runs batched where ``augment_on`` says:
``"device"`` after the batch reaches the accelerator (``on_after_batch_transfer``),
``"loader"`` in the worker processes, ``"auto"`` = device with CUDA, loader without,
``"none"`` = off. Batches: see :mod:`medssl.data.crops`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from medssl.data.crops import CropCollate, CropDataset, make_views
from medssl.data.sampler import resumable_sampler
from medssl.data.split import split_by_patient
from medssl.preprocess.volume_cache import CacheIndex, build_cache, ensure_cache
from medssl.store.plan import PLAN_FILE, Plan, fingerprint, make_plan
from medssl.transforms.pipeline import AugmentConfig, BatchAugment
from medssl.types import BatchKey

log = logging.getLogger("medssl.data")
AugmentOn = Literal["auto", "device", "loader", "none"]  # where augmentation runs (module doc)
AUGMENT_ON = get_args(AugmentOn)
DEFAULT_AUGMENT = AugmentConfig()


def load_or_make_plan(store: str | Path) -> Plan:
    """``STORE/plan.json``, made from the store's fingerprint and saved when missing."""
    if (Path(store) / PLAN_FILE).is_file():
        return Plan.load(store)
    plan = make_plan(fingerprint(store))
    plan.save(store)
    log.info("plan written to %s (spacing %s, crop %s)", Path(store) / PLAN_FILE, plan.target_spacing, plan.crop_size)
    return plan


class _CropDataModule(LightningDataModule):
    """What the 3D and 2D modules share; each public class states its own typed signature."""

    slice_axis: int | None = None

    def _init(self, store, crop_size, crops_per_volume, batch_size, num_workers, val_fraction, seed, views, samples_per_epoch, augment, augment_on, cache_workers, pin_memory, prefetch_factor, progress) -> None:
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on '{augment_on}': expected one of {AUGMENT_ON}")
        if batch_size < 1 or num_workers < 0 or views < 0:
            raise ValueError(f"batch_size {batch_size}, num_workers {num_workers}, views {views}: expected >= 1, >= 0, >= 0")
        self.store = str(store)
        self.crop_size = None if crop_size is None else tuple(int(s) for s in crop_size)
        self.crops_per_volume, self.batch_size, self.num_workers = crops_per_volume, batch_size, num_workers
        self.val_fraction, self.seed, self.views, self.samples_per_epoch = val_fraction, seed, views, samples_per_epoch
        self.augment_config, self.augment_on, self.cache_workers = augment, augment_on, cache_workers
        self.pin_memory, self.prefetch_factor, self.progress = pin_memory, prefetch_factor, progress
        self.prepare_data_per_node = False  # one cache builder for a shared store
        self.plan: Plan | None = None
        self.index: CacheIndex | None = None
        self.augment: BatchAugment | None = None
        self.train_set: CropDataset | None = None
        self.val_set: CropDataset | None = None

    # stages -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        build_cache(self.store, load_or_make_plan(self.store), self.cache_workers, self.progress)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.plan = Plan.load(self.store)
        self.index = ensure_cache(self.store, self.plan, self.cache_workers, self.progress)
        if not self.index.volumes:
            raise ValueError(f"store {self.store}: no volume to pretrain on (the plan selects 3D volumes of at least {self.plan.min_slices} slices)")
        crop = self.crop_size or self.default_crop_size(self.plan)
        self.augment = None if self.augment_on == "none" else BatchAugment.from_config(self.augment_config, crop)
        train, val = split_by_patient(self.index.volumes, self.val_fraction, self.seed)
        common = {"crop_size": crop, "crops_per_volume": self.crops_per_volume, "slice_axis": self.slice_axis, "seed": self.seed}
        self.train_set = CropDataset(self.index, train, length=self.samples_per_epoch, **common)
        self.val_set = CropDataset(self.index, val, fixed=True, **common) if val else None

    def default_crop_size(self, plan: Plan) -> tuple[int, ...]:
        return plan.crop_size

    # loaders ------------------------------------------------------------------------------
    def _augment_in_loader(self) -> bool:
        return self.augment is not None and (self.augment_on == "loader" or (self.augment_on == "auto" and not torch.cuda.is_available()))

    def _loader(self, dataset: CropDataset, train: bool) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=resumable_sampler(self.trainer, len(dataset), self.seed, self.batch_size) if train else None,  # a resumed run continues the same stream
            num_workers=workers,
            collate_fn=CropCollate(self.augment if self._augment_in_loader() else None, self.views),
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=workers > 0,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        return self._loader(self.val_set, train=False) if self.val_set is not None else []

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


class PretrainDataModule(_CropDataModule):
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
        super().__init__()
        self._init(store, crop_size, crops_per_volume, batch_size, num_workers, val_fraction, seed, views, samples_per_epoch, augment, augment_on, cache_workers, pin_memory, prefetch_factor, progress)


class PretrainSliceDataModule(_CropDataModule):
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
        super().__init__()
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis {slice_axis}: expected 0, 1 or 2")
        self.slice_axis = slice_axis
        self._init(store, crop_size, crops_per_volume, batch_size, num_workers, val_fraction, seed, views, samples_per_epoch, augment, augment_on, cache_workers, pin_memory, prefetch_factor, progress)

    def default_crop_size(self, plan: Plan) -> tuple[int, ...]:
        if self.slice_axis == 2:
            return plan.crop_size_2d
        return tuple(s for a, s in enumerate(plan.crop_size) if a != self.slice_axis)


def crop_shapes(module: _CropDataModule) -> Sequence[int]:
    """The crop size a set-up module samples (for models that need it at construction)."""
    if module.train_set is None:
        raise RuntimeError("call setup() first")
    return module.train_set.crop_size
