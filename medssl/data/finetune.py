"""The fine-tuning LightningDataModule: labelled crops for segmentation, detection or classification.

``prepare_data`` (global rank 0) makes the plan if missing and builds the image and label
caches (:mod:`medssl.preprocess.volume_cache`, :mod:`medssl.preprocess.label_cache`); ``setup`` (every rank)
reads them, picks the cases the task can use, splits them by patient (train/val never
share a patient) and keeps a seeded, nested ``label_fraction`` of the training cases (the
label-efficiency harness). Batches (B = ``batch_size``; ``crop`` = ``crop_size``, 3 or 2
sides):

- segmentation: ``image`` ``[B, 1, *crop]`` float32, ``label`` ``[B, *crop]`` int64 in
  0..K (K selected structures in value order; ``class_names[k]`` names class k, 0 is
  background, ``class_values[k]`` is its value in the store's masks: what predict writes);
  a ``foreground_oversample`` share of crops is centred on a voxel of a random present class
  (nnU-Net's oversampling). Validation: one whole cached volume per batch,
  ``image`` ``[1, 1, X, Y, Z]``, ``label`` ``[1, X, Y, Z]``, ``volume_id``, ``spacing``
  (the task runs a sliding window; with ``spatial_dims=2``, slice by slice).
- detection: ``image`` and ``targets``, a list of B ``{"boxes": [N, 2S] float32, "labels":
  [N] int64}`` in crop voxel edges (``x0, y0, z0, x1, y1, z1``, MONAI's detector input);
  boxes come from the connected components of the selected structures (default: names
  containing "lesion"), or the store's world boxes for cases without a map. Validation:
  whole volumes with their boxes, batch 1.
- classification: one crop per case centred on the body (jittered in training),
  ``target`` ``[B]`` class index, or ``[B, C]`` multi-hot when multi-label (any case with
  other than one class); vocabulary from :func:`medssl.store.labels.class_names`.
  Validation: the centred crops.

Every batch carries ``volume`` ``[B]`` (index into ``index.volumes``). Training batches are
augmented in ``on_after_batch_transfer`` (on the device): image and label map alike, boxes
by flips and quarter turns only. Batches are a pure function of (seed, step): a run
resumed at step k sees what the run that never stopped saw.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from medssl.data.finetune_augment import augment_labelled, finetune_augment
from medssl.data.finetune_cases import (
    case_boxes,
    class_lut,
    classification_targets,
    labelled_subset,
    select_structures,
)
from medssl.data.finetune_sets import (
    ClassificationCrops,
    DetectionCrops,
    FinetuneCollate,
    SegmentationCrops,
    WholeVolumes,
)
from medssl.data.sampler import resumable_sampler
from medssl.data.split import content_id, split_by_patient
from medssl.preprocess.label_cache import LabelCache, build_label_cache, ensure_label_cache
from medssl.preprocess.volume_cache import CacheIndex, build_cache, ensure_cache
from medssl.store.labels import class_names, read_labels, read_split, structure_names
from medssl.store.plan import Plan, load_or_make_plan
from medssl.transforms.pipeline import AugmentConfig, BatchAugment
from medssl.types import BatchKey, TaskKind

log = logging.getLogger("medssl.data")
# No flips or quarter turns by default: the store is RAS-canonical, so mirrored or rotated
# anatomy never reaches the model at inference, and a left-right flip would swap the labels of
# lateral structures (left/right lung, kidney) - the model could then not tell them apart.
# Small affine rotations, scaling and intensity changes stay.
DEFAULT_AUGMENT = AugmentConfig(flip_prob=0.0, rot90_prob=0.0)


class FinetuneDataModule(LightningDataModule):
    """Labelled crops of the store's cached volumes for ``task`` (see the module docstring for batches).

    ``label_fraction`` of the training cases (at least one; ``fraction_seed`` picks them, the
    subsets nest); ``val_fraction`` of the patients validate (``split_seed``);
    ``structures``: segmentation classes or detection box structures by name;
    ``merge_as`` (detection): every selected structure is one box class of this name (a finding
    found whatever its kind, as LUNA16 counts nodules);
    ``samples_per_epoch``: crops per epoch (default: one per training case);
    ``spatial_dims=2``: axial slices, ``crop_size`` in-plane (default ``plan.crop_size_2d``).
    """

    def __init__(
        self,
        store: str,
        task: str = "segmentation",
        crop_size: list[int] | None = None,
        batch_size: int = 2,
        num_workers: int = 2,
        label_fraction: float = 1.0,
        fraction_seed: int = 0,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        foreground_oversample: float = 0.33,
        structures: list[str] | None = None,
        merge_as: str | None = None,
        samples_per_epoch: int | None = None,
        augment: bool = True,
        augment_config: AugmentConfig = DEFAULT_AUGMENT,
        seed: int = 0,
        spatial_dims: int = 3,
        cache_workers: int = 1,
        progress: bool = True,
    ) -> None:
        super().__init__()
        task = TaskKind.parse(task)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims {spatial_dims}: expected 2 or 3")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size {batch_size}, num_workers {num_workers}: expected >= 1 and >= 0")
        if not 0.0 < label_fraction <= 1.0:
            raise ValueError(f"label_fraction {label_fraction}: expected a value in (0, 1]")
        if crop_size is not None and len(crop_size) != spatial_dims:
            raise ValueError(f"crop_size {list(crop_size)}: expected {spatial_dims} sides for spatial_dims={spatial_dims}")
        self.store, self.task = str(store), task
        self.crop_size = None if crop_size is None else tuple(int(s) for s in crop_size)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.label_fraction, self.fraction_seed = label_fraction, fraction_seed
        self.val_fraction, self.split_seed = val_fraction, split_seed
        if merge_as is not None and (task != TaskKind.DETECTION or not str(merge_as).strip()):
            raise ValueError(f"merge_as {merge_as!r}: a non-empty class name, for task detection only (task {task})")
        self.foreground_oversample, self.structures, self.merge_as = foreground_oversample, structures, merge_as
        self.samples_per_epoch, self.seed, self.spatial_dims = samples_per_epoch, seed, spatial_dims
        self.augment_enabled, self.augment_config = augment, augment_config
        self.cache_workers, self.progress = cache_workers, progress
        self.prepare_data_per_node = False  # one cache builder for a shared store
        self.plan: Plan | None = None
        self.index: CacheIndex | None = None
        self.labels: LabelCache | None = None
        self.augment: BatchAugment | None = None
        self.train_set = self.val_set = None
        self.train_cases: list[str] = []
        self.val_cases: list[str] = []
        self._require_labels()
        self.class_values: list[int] | None = None  # the masks' value of each class (set with class_names)
        self.modalities: list[str] = []  # modalities of the cases used (known after setup)
        self.class_names: list[str] = self._vocabulary()  # known before setup: the CLI links it into the task
        self.multi_label = self.task == TaskKind.CLASSIFICATION and any(len(r.classes) != 1 for r in read_labels(self.store).values())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # stages -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self._require_labels()
        plan = load_or_make_plan(self.store)
        index = build_cache(self.store, plan, self.cache_workers, self.progress)
        build_label_cache(self.store, plan, index, self.cache_workers, self.progress)

    def _require_labels(self) -> None:
        if not read_labels(self.store):
            raise ValueError(f"store {self.store}: no labels (the manifest has no 'labels' rows); ingest label maps, classes or boxes with `medssl ingest --labels TABLE` before fine-tuning")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self._require_labels()
        self.plan = Plan.load(self.store)
        self.index = ensure_cache(self.store, self.plan, self.cache_workers, self.progress)
        self.labels = ensure_label_cache(self.store, self.plan, self.index, self.cache_workers, self.progress)
        slice_axis = 2 if self.spatial_dims == 2 else None
        crop = self.crop_size or (self.plan.crop_size_2d if slice_axis is not None else self.plan.crop_size)
        cases, extra = self._cases()
        position = {v.volume_id: i for i, v in enumerate(self.index.volumes)}
        volumes = [position[vid] for vid in cases]
        train, val = split_by_patient([self.index.volumes[i] for i in volumes], self.val_fraction, self.split_seed, read_split(self.store))
        train = [volumes[k] for k in train]
        train = [train[k] for k in labelled_subset([content_id(self.index.volumes[i]) for i in train], self.label_fraction, self.fraction_seed)]
        val = [volumes[k] for k in val]
        self.train_cases = [self.index.volumes[i].volume_id for i in train]
        self.val_cases = [self.index.volumes[i].volume_id for i in val]
        self.modalities = sorted({self.index.volumes[i].modality for i in train + val})
        common = {"crop_size": crop, "slice_axis": slice_axis, "seed": self.seed}
        length = self.samples_per_epoch or len(train)
        if self.task == TaskKind.SEGMENTATION:
            self.train_set = SegmentationCrops(self.index, self.labels, train, length=length, lut=extra, foreground_oversample=self.foreground_oversample, **common)
            self.val_set = WholeVolumes(self.index, self.labels, val, lut=extra) if val else None
        elif self.task == TaskKind.DETECTION:
            self.train_set = DetectionCrops(self.index, self.labels, train, length=length, case_boxes=extra, foreground_oversample=self.foreground_oversample, **common)
            self.val_set = WholeVolumes(self.index, self.labels, val, case_boxes=extra) if val else None
        else:
            self.train_set = ClassificationCrops(self.index, self.labels, train, length=length, targets=extra, **common)
            self.val_set = ClassificationCrops(self.index, self.labels, val, targets=extra, fixed=True, **common) if val else None
        if self.augment_enabled:
            self.augment = finetune_augment(self.augment_config, crop, self.task)
        log.info("%s: %d training cases (label_fraction %s), %d validation cases", self.task, len(train), self.label_fraction, len(val))

    def _vocabulary(self) -> list[str]:
        """The task's output names from the store's labels table (no cache needed); sets
        ``class_values`` (segmentation: ``[0, *values]``, detection: the values)."""
        if self.task == TaskKind.CLASSIFICATION:
            return list(class_names(self.store))
        known = structure_names(self.store)
        values = select_structures(known, self.structures, self.task)
        names = [known[v] for v in values]
        self.class_values = [0, *values] if self.task == TaskKind.SEGMENTATION else list(values)
        if self.merge_as is not None:  # one class: no single mask value stands for it
            self.class_values = None
            return [self.merge_as]
        return ["background", *names] if self.task == TaskKind.SEGMENTATION else names

    def _cases(self) -> tuple[list[str], object]:
        """The volume_ids the task can use and its per-case data (lut, boxes or targets); sets ``class_names``."""
        entries = self.labels.entries
        if self.task == TaskKind.CLASSIFICATION:
            vocabulary = class_names(self.store)
            usable = dict(entries)
            targets, self.multi_label = classification_targets(usable, vocabulary)
            self.class_names = list(vocabulary)
            cases = sorted(usable)
            position = {v.volume_id: i for i, v in enumerate(self.index.volumes)}
            return self._nonempty(cases, "a label record"), {position[vid]: targets[vid] for vid in cases}
        known = structure_names(self.store)
        values = select_structures(known, self.structures, self.task)
        names = [known[v] for v in values]
        self.class_values = [0, *values] if self.task == TaskKind.SEGMENTATION else list(values)
        if self.task == TaskKind.SEGMENTATION:
            self.class_names = ["background", *names]
            cases = sorted(vid for vid, e in entries.items() if e.file is not None)
            return self._nonempty(cases, "a label map"), class_lut(values)
        self.class_names = names
        cases = sorted(vid for vid, e in entries.items() if e.file is not None or e.boxes)
        position = {v.volume_id: i for i, v in enumerate(self.index.volumes)}
        boxes = {position[vid]: case_boxes(entries[vid], values, names) for vid in cases}
        if self.merge_as is not None:
            self.class_names, self.class_values = [self.merge_as], None
            boxes = {k: (b, np.zeros_like(c)) for k, (b, c) in boxes.items()}
        return self._nonempty(cases, "a label map or boxes"), boxes

    def _nonempty(self, cases: list[str], what: str) -> list[str]:
        if not cases:
            raise ValueError(f"store {self.store}: no cached volume has {what} for {self.task} ({len(self.labels.entries)} labelled volumes cached, {len(self.labels.failed)} failed)")
        return cases

    # loaders ------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, self.batch_size, resumable_sampler(self.trainer, len(self.train_set), self.seed, self.batch_size))

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        if self.val_set is None:
            return []
        return self._loader(self.val_set, self.batch_size if self.task == TaskKind.CLASSIFICATION else 1, None)

    def _loader(self, dataset, batch_size: int, sampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=FinetuneCollate(),
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    # augmentation on the device -----------------------------------------------------------
    def augment_batch(self, batch: dict) -> dict:
        """The training batch augmented by its own seed (a batch without a seed passes through)."""
        if BatchKey.SEED not in batch:
            return batch
        batch = dict(batch)
        seed = int(batch.pop(BatchKey.SEED))
        if self.augment is None:
            return batch
        return augment_labelled(batch, self.augment, torch.Generator().manual_seed(seed))

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        return self.augment_batch(batch)
