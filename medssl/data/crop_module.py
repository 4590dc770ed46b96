"""The base of the pretraining data modules: :class:`~medssl.data.pretrain.PretrainDataModule`
(3D crops), :class:`~medssl.data.pretrain.PretrainSliceDataModule` (2D slice crops) and
:class:`~medssl.data.joint.JointDataModule` (slice stacks + 2D image crops).

What they share lives here once: :class:`LoaderOptions` (the shared options, typed and
validated) and :class:`CropDataModule`, which builds their training and validation
``DataLoader`` (the plan: :func:`medssl.store.plan.load_or_make_plan`). Each public module
keeps its own flat, typed ``__init__`` (LightningCLI reads that signature: ``--data.batch_size``, the YAML configs)
and hands the shared options to the base as one :class:`LoaderOptions`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from medssl.data.sampler import resumable_sampler
from medssl.store.plan import Plan


@dataclass(frozen=True)
class LoaderOptions:
    """The options every pretraining data module takes (their meaning: the modules' docs).

    ``batch_size`` items per batch, ``num_workers`` loader processes (0: the main process),
    ``pin_memory`` (with CUDA only) and ``prefetch_factor`` (with workers only) of the loaders;
    ``val_fraction`` of the patients held out, ``seed`` of the split, the draws and the
    training sampler; ``samples_per_epoch`` (None: the module's default); ``cache_workers``
    and ``progress`` of the cache builds.
    """

    batch_size: int
    num_workers: int
    val_fraction: float
    seed: int
    samples_per_epoch: int | None
    cache_workers: int
    pin_memory: bool
    prefetch_factor: int
    progress: bool

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size {self.batch_size}: expected >= 1")
        if self.num_workers < 0:
            raise ValueError(
                f"num_workers {self.num_workers}: expected >= 0 (0: load in the main process)"
            )

    @classmethod
    def of(cls, arguments: Mapping[str, object]) -> LoaderOptions:
        """The options among a data module's ``__init__`` arguments (its ``locals()``), by name:
        each public module keeps its flat signature for LightningCLI and names them once."""
        return cls(**{f.name: arguments[f.name] for f in dataclasses.fields(cls)})


class CropDataModule(LightningDataModule, ABC):
    """A store, an optional crop size and the shared :class:`LoaderOptions`; subclasses make
    ``plan``, ``train_set`` and ``val_set`` in ``setup`` and say how to collate
    (:meth:`collate_fn`); this class serves the loaders."""

    def __init__(self, store: str, crop_size: Sequence[int] | None, options: LoaderOptions) -> None:
        super().__init__()
        self.store = str(store)
        self.crop_size = None if crop_size is None else tuple(int(s) for s in crop_size)
        self.options = options
        self.prepare_data_per_node = False  # one cache builder for a shared store
        self.plan: Plan | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @abstractmethod
    def collate_fn(self) -> Callable[[list[dict]], dict]:
        """How items become a batch (called once ``setup`` has run)."""

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        o = self.options
        return DataLoader(
            dataset,
            batch_size=o.batch_size,
            sampler=resumable_sampler(self.trainer, len(dataset), o.seed, o.batch_size)
            if train
            else None,  # a resumed run continues the same stream
            num_workers=o.num_workers,
            collate_fn=self.collate_fn(),
            pin_memory=o.pin_memory and torch.cuda.is_available(),
            persistent_workers=o.num_workers > 0,
            prefetch_factor=o.prefetch_factor if o.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        return self._loader(self.val_set, train=False) if self.val_set is not None else []
