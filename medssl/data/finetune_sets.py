"""Fine-tuning datasets over the image and label caches: segmentation, detection and classification crops,
whole volumes for validation.

Every training item is one crop of one case, seeded by its index (``(seed, item)``), so
:class:`~medssl.data.sampler.StepSampler` indices make every batch reproducible after a
resume. ``slice_axis=2`` turns the crops into axial 2D slices (a crop of depth 1, squeezed).
Items: ``image`` ``[1, *crop]`` float32, ``volume`` (index into ``CacheIndex.volumes``),
``seed`` (the batch augmentation's), plus the task's target: ``label`` ``[*crop]`` int64
(segmentation), ``boxes`` ``[N, 2S]`` float32 / ``labels`` ``[N]`` int64 (detection, crop
voxel edges, see :mod:`medssl.data.boxes`), ``target`` (classification: a class index, or
a multi-hot ``[C]`` float32).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medssl.data.boxes import boxes_in_crop
from medssl.data.split import content_id
from medssl.preprocess.geometry import empty_boxes
from medssl.preprocess.label_cache import LabelCache
from medssl.preprocess.volume_cache import CacheIndex
from medssl.transforms.rng import derive_seed, keyed_generator
from medssl.transforms.spatial import crop_box
from medssl.transforms.views import sample_crop_starts
from medssl.types import BatchKey

GOLDEN = 0.6180339887498949  # item * GOLDEN mod 1 spreads evenly: a steady foreground share
LOCATIONS_PER_CLASS = 4096


def window(start: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Source slices in a volume of ``shape`` and destination slices in the crop for a box that may leave it."""
    src, dst = [], []
    for s, n, dim in zip(start, size, shape):
        lo, hi = max(0, int(s)), min(int(dim), int(s) + int(n))
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - int(s), lo - int(s) + max(0, hi - lo)))
    return tuple(src), tuple(dst)


def clamp_start(centre: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> list[int]:
    """The start of a crop of ``size`` centred on ``centre``, kept inside the volume where it fits."""
    out = []
    for c, n, dim in zip(centre, size, shape):
        lo, hi = min(0, int(dim) - int(n)), max(0, int(dim) - int(n))
        out.append(int(min(max(int(c) - int(n) // 2, lo), hi)))
    return out


class CaseDataset(Dataset):
    """What the fine-tuning datasets share: cases, crop geometry, per-item seeding, cached reads."""

    def __init__(self, index: CacheIndex, labels: LabelCache, volumes: Sequence[int], crop_size: Sequence[int], length: int | None = None, slice_axis: int | None = None, seed: int = 0, fixed: bool = False) -> None:
        if not volumes:
            raise ValueError("a fine-tuning dataset needs at least one case")
        expected = 2 if slice_axis is not None else 3
        if len(crop_size) != expected or min(crop_size) < 1:
            raise ValueError(f"crop_size {tuple(crop_size)}: expected {expected} positive sides")
        self.index, self.labels, self.volumes = index, labels, list(volumes)
        self.crop_size = tuple(int(s) for s in crop_size)
        self.read_size = list(self.crop_size)
        if slice_axis is not None:
            self.read_size.insert(slice_axis, 1)
        self.slice_axis, self.seed, self.fixed = slice_axis, seed, fixed
        self.length = len(self.volumes) if length is None else int(length)
        self._maps: dict[tuple[str, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def case(self, item: int) -> int:
        return self.volumes[(item % self.length) % len(self.volumes)]

    def entry(self, i: int):
        return self.labels.entries[self.index.volumes[i].volume_id]

    def image(self, i: int) -> np.ndarray:
        if ("image", i) not in self._maps:  # per process: a worker maps only what it reads
            self._maps["image", i] = self.index.open(self.index.volumes[i])
        return self._maps["image", i]

    def label_map(self, i: int) -> np.ndarray:
        if ("label", i) not in self._maps:
            self._maps["label", i] = self.labels.open(self.entry(i))
        return self._maps["label", i]

    def generator(self, item: int) -> torch.Generator:
        return keyed_generator(self.seed, item)

    def wants_foreground(self, item: int, share: float) -> bool:
        return (item * GOLDEN) % 1.0 < share

    def read_image(self, i: int, start: Sequence[int]) -> torch.Tensor:
        """``[1, *crop]`` float32 at ``start`` (padded with the volume's pad value)."""
        crop = crop_box(self.image(i)[None], list(start), self.read_size, self.index.volumes[i].pad_value)
        return crop.squeeze(1 + self.slice_axis) if self.slice_axis is not None else crop

    def random_start(self, i: int, g: torch.Generator) -> list[int]:
        return sample_crop_starts(self.index.volumes[i].shape, self.read_size, 1, g)[0].tolist()

    def finish(self, item: int, i: int, g: torch.Generator, sample: dict) -> dict:
        sample[BatchKey.VOLUME] = i
        if not self.fixed:  # validation is never augmented: no seed to augment with
            sample[BatchKey.SEED] = int(torch.randint(0, 2**62, (1,), generator=g))
        return sample


class SegmentationCrops(CaseDataset):
    """Random crops, a ``foreground_oversample`` share centred on a voxel of a random present class.

    ``lut`` maps stored label values to training classes 0..K (unselected → 0).
    """

    def __init__(self, *args, lut: np.ndarray, foreground_oversample: float = 0.33, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= foreground_oversample <= 1.0:
            raise ValueError(f"foreground_oversample {foreground_oversample}: expected a share in [0, 1]")
        self.lut, self.share = lut, foreground_oversample
        self._locations: dict[int, dict[int, np.ndarray]] = {}

    def read_label(self, i: int, start: Sequence[int]) -> torch.Tensor:
        """``[*crop]`` int64 classes at ``start`` (0 outside the volume)."""
        labels = self.label_map(i)
        src, dst = window(start, self.read_size, labels.shape)
        out = np.zeros(self.read_size, dtype=np.int64)
        out[dst] = self.lut[np.asarray(labels[src])]
        crop = torch.from_numpy(out)
        return crop.squeeze(self.slice_axis) if self.slice_axis is not None else crop

    def locations(self, i: int) -> dict[int, np.ndarray]:
        """Per present class, up to 4096 of its voxels ``[n, 3]`` (drawn once per volume and process)."""
        if i not in self._locations:
            classes = self.lut[np.asarray(self.label_map(i))]
            rng = np.random.default_rng(int(content_id(self.index.volumes[i])[:16], 16))  # no project key moves it
            found = {}
            for c in np.unique(classes).tolist():
                if c == 0:
                    continue
                where = np.argwhere(classes == c)
                found[c] = where[rng.choice(len(where), min(len(where), LOCATIONS_PER_CLASS), replace=False)]
            self._locations[i] = found
        return self._locations[i]

    def __getitem__(self, item: int) -> dict:
        i, g = self.case(item), self.generator(item)
        start = self.random_start(i, g)
        if self.wants_foreground(item, self.share):
            present = self.locations(i)
            if present:
                classes = sorted(present)
                points = present[classes[int(torch.randint(len(classes), (1,), generator=g))]]
                centre = points[int(torch.randint(len(points), (1,), generator=g))]
                start = clamp_start(centre, self.read_size, self.index.volumes[i].shape)
        sample = {BatchKey.IMAGE: self.read_image(i, start), BatchKey.LABEL: self.read_label(i, start)}
        return self.finish(item, i, g, sample)


class DetectionCrops(CaseDataset):
    """Crops with the case's boxes inside them; a ``foreground_oversample`` share centred in a random box.

    ``case_boxes[i]``: boxes ``[N, 6]`` (cached voxels) and classes ``[N]`` of volume ``i``.
    Boxes are clipped to the crop; a box keeping less than half its volume (area in 2D) is dropped.
    """

    def __init__(self, *args, case_boxes: dict[int, tuple[np.ndarray, np.ndarray]], foreground_oversample: float = 0.33, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= foreground_oversample <= 1.0:
            raise ValueError(f"foreground_oversample {foreground_oversample}: expected a share in [0, 1]")
        self.case_boxes, self.share = case_boxes, foreground_oversample

    def targets(self, i: int, start: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, classes = self.case_boxes[i]
        size = list(self.read_size)
        if self.slice_axis is not None:  # 2D: the boxes the slice cuts, projected onto it
            a, s = self.slice_axis, start[self.slice_axis]
            cut = (boxes[:, a] <= s) & (boxes[:, 3 + a] > s)
            keep = [d for d in range(3) if d != a]
            boxes, classes = boxes[cut][:, keep + [3 + d for d in keep]], classes[cut]
            start, size = [start[d] for d in keep], [size[d] for d in keep]
        if len(boxes) == 0:
            return torch.from_numpy(empty_boxes(len(size))), torch.zeros(0, dtype=torch.long)
        inside, kept = boxes_in_crop(boxes, classes, start, size)
        return torch.from_numpy(inside), torch.from_numpy(kept.astype(np.int64))

    def __getitem__(self, item: int) -> dict:
        i, g = self.case(item), self.generator(item)
        start = self.random_start(i, g)
        boxes = self.case_boxes[i][0]
        if self.wants_foreground(item, self.share) and len(boxes):
            box = boxes[int(torch.randint(len(boxes), (1,), generator=g))]
            u = torch.rand(3, generator=g, dtype=torch.float64).numpy()
            centre = np.floor(box[:3] + u * (box[3:] - box[:3])).astype(int)
            start = clamp_start(centre, self.read_size, self.index.volumes[i].shape)
        boxes_t, labels_t = self.targets(i, start)
        sample = {BatchKey.IMAGE: self.read_image(i, start), BatchKey.BOXES: boxes_t, BatchKey.LABELS: labels_t}
        return self.finish(item, i, g, sample)


class ClassificationCrops(CaseDataset):
    """One crop per case centred on the body (the bounding box of voxels above the background),
    shifted at random by up to ``jitter`` of the crop per axis in training (``fixed``: never).

    ``targets[i]``: volume ``i``'s class index (int) or multi-hot ``[C]`` (float32).
    """

    def __init__(self, *args, targets: dict[int, int | np.ndarray], jitter: float = 0.125, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.targets, self.jitter = targets, jitter
        self._centres: dict[int, np.ndarray] = {}

    def body_centre(self, i: int) -> np.ndarray:
        if i not in self._centres:
            array = np.asarray(self.image(i)[::2, ::2, ::2], dtype=np.float32)  # half resolution is enough
            lo, hi = np.percentile(array, [1.0, 99.0])
            where = np.argwhere(array > lo + 0.1 * (hi - lo))
            shape = np.asarray(self.index.volumes[i].shape)
            centre = (where.min(0) + where.max(0) + 1) if len(where) else shape // 2  # x2 for the stride, /2 for the middle
            self._centres[i] = np.minimum(centre, shape - 1)
        return self._centres[i]

    def __getitem__(self, item: int) -> dict:
        i, g = self.case(item), self.generator(item)
        centre = self.body_centre(i).astype(np.float64)
        if not self.fixed and self.jitter > 0:
            u = torch.rand(3, generator=g, dtype=torch.float64).numpy() * 2 - 1
            centre = centre + u * self.jitter * np.asarray(self.read_size)
        start = clamp_start(np.round(centre).astype(int), self.read_size, self.index.volumes[i].shape)
        target = self.targets[i]
        target_t = torch.tensor(target, dtype=torch.long) if isinstance(target, int) else torch.from_numpy(target)
        sample = {BatchKey.IMAGE: self.read_image(i, start), BatchKey.TARGET: target_t}
        return self.finish(item, i, g, sample)


class WholeVolumes(CaseDataset):
    """Validation: each case's whole cached volume ``[1, X, Y, Z]``, its ``volume_id`` and
    ``spacing`` ``[3]``, with ``label`` ``[X, Y, Z]`` (``lut`` given) or ``boxes``/``labels``
    in volume voxels (``case_boxes`` given)."""

    def __init__(self, index: CacheIndex, labels: LabelCache, volumes: Sequence[int], lut: np.ndarray | None = None, case_boxes: dict | None = None) -> None:
        super().__init__(index, labels, volumes, index.volumes[volumes[0]].shape if volumes else (1, 1, 1), fixed=True)
        self.lut, self.case_boxes = lut, case_boxes

    def __getitem__(self, item: int) -> dict:
        i = self.volumes[item]
        volume = self.index.volumes[i]
        sample = {
            BatchKey.IMAGE: torch.from_numpy(np.asarray(self.image(i), dtype=np.float32))[None],
            BatchKey.VOLUME_ID: volume.volume_id,
            BatchKey.SPACING: torch.tensor(volume.spacing, dtype=torch.float64),
            BatchKey.VOLUME: i,
        }
        if self.lut is not None:
            sample[BatchKey.LABEL] = torch.from_numpy(self.lut[np.asarray(self.label_map(i))].astype(np.int64))
        if self.case_boxes is not None:
            boxes, classes = self.case_boxes[i]
            sample[BatchKey.BOXES], sample[BatchKey.LABELS] = torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(classes.astype(np.int64))
        return sample


class FinetuneCollate:
    """Stacks tensors; detection's ``boxes``/``labels`` become ``targets``, a list of
    ``{"boxes", "labels"}`` (MONAI's detector input); item seeds combine into one batch seed."""

    def __call__(self, items: list[dict]) -> dict:
        batch: dict = {}
        for key in items[0]:
            values = [item[key] for item in items]
            if key in (BatchKey.BOXES, BatchKey.LABELS, BatchKey.SEED):
                continue
            if isinstance(values[0], torch.Tensor):
                batch[key] = torch.stack(values)
            elif isinstance(values[0], int):
                batch[key] = torch.tensor(values, dtype=torch.long)
            else:
                batch[key] = values
        if BatchKey.BOXES in items[0]:
            batch[BatchKey.TARGETS] = [
                {BatchKey.BOXES: item[BatchKey.BOXES], BatchKey.LABELS: item[BatchKey.LABELS]}
                for item in items
            ]
        if BatchKey.SEED in items[0]:
            batch[BatchKey.SEED] = derive_seed(*(item[BatchKey.SEED] for item in items))
        return batch
