"""Cross-volume crop pairs by construction: a point in volume A, its corresponding point in B, a crop around each.

Paper: Jiang et al. 2023, "Anatomical Invariance Modeling and Semantic Alignment for
Self-supervised Learning in 3D Medical Image Analysis" (Alice): pick a random point in one
volume, find the same anatomy in another volume, crop both around the two points, so every
anchor has a positive. Alice finds the point with a pretrained anatomical embedding (SAM, Yan
et al. 2022), retrying until its match score passes 0.7; here the prior is the point's
normalised body coordinate (:func:`map_body_points`: the same place relative to each
volume's body box, :attr:`~medssl.preprocess.volume_cache.CachedVolume.body_box`), and
:func:`refine_by_embedding` moves it to the best match of a teacher's token map in a local
window, kept only where the match is confident enough, else the prior stands. With
``refine_margin`` > 0 each partner also comes with that window of B (the crop grown by the
margin on every side, centred on the prior point) and the batch is left unaugmented: the
method refines the partner inside its window with its teacher, then augments
(:mod:`medssl.methods.anatomy_refine`).

Points are float voxel coordinates ``[M, 3]`` of the cached volume; body boxes are
``(lo..., hi...)``; token maps ``[C, *grid]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from medssl.data.crops import CropCollate, CropDataset, body_coordinates
from medssl.data.pretrain import DEFAULT_AUGMENT, AugmentOn, PretrainDataModule
from medssl.preprocess.volume_cache import CacheIndex
from medssl.transforms.pipeline import AugmentConfig
from medssl.transforms.spatial import box_of, crop_box
from medssl.types import BatchKey


def _box(body_box: Sequence[float]) -> tuple[Tensor, Tensor]:
    if len(body_box) != 6:
        raise ValueError(f"a body box is 6 numbers (lo..., hi...), got {len(body_box)}")
    box = torch.tensor([float(b) for b in body_box], dtype=torch.float64)
    return box[:3], box[3:]


def map_body_points(
    points: Tensor, body_box_a: Sequence[float], body_box_b: Sequence[float]
) -> Tensor:
    """``[M, 3]`` points of volume A -> the points at the same normalised body coordinates in B."""
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [M, 3], got {tuple(points.shape)}")
    lo_a, hi_a = _box(body_box_a)
    lo_b, hi_b = _box(body_box_b)
    relative = (points.double() - lo_a) / (hi_a - lo_a).clamp(min=1.0)
    return (lo_b + relative * (hi_b - lo_b)).to(points.dtype)


def sample_body_points(body_box: Sequence[float], n: int, generator: torch.Generator) -> Tensor:
    """``[n, 3]`` float points uniform inside the body box (anchors: never in the air around it)."""
    lo, hi = _box(body_box)
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    return (lo + u * (hi - lo).clamp(min=0.0)).float()


def on_tissue(array, points: Tensor, pad_value: float) -> Tensor:
    """``[M]`` bool: the voxel at each point of ``array`` ``[X, Y, Z]`` is above the pad value (air)."""
    shape = torch.tensor(array.shape)
    index = torch.minimum(torch.round(points.float()).long().clamp(min=0), shape - 1)
    values = torch.tensor([float(array[tuple(i)]) for i in index.tolist()])
    return values > pad_value + 1e-3


def centred_starts(points: Tensor, size: Sequence[int]) -> Tensor:
    """``[M, 3]`` int64 starts of crops of ``size`` centred on the points."""
    half = torch.tensor([float(s) for s in size]) / 2
    return torch.round(points.float() - half).long()


@torch.no_grad()
def refine_by_embedding(
    anchor_map: Tensor, window_map: Tensor, threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Where the anchor's token map best matches inside a larger window's map.

    Args:
        anchor_map: ``[C, *g]`` teacher tokens of the anchor crop.
        window_map: ``[C, *G]`` teacher tokens of a window centred on the prior point, ``G >= g``
            per axis with ``G - g`` even (the prior is the centred placement).
        threshold: minimum confidence (mean cosine of aligned tokens) to move off the prior.

    Returns:
        ``(shift [3] int64 in tokens from the centred placement, confidence, kept)``: the shift
        is 0 where the best match is below ``threshold`` (the prior stands, ``kept`` False).
    """
    if anchor_map.ndim != 4 or window_map.ndim != 4 or anchor_map.shape[0] != window_map.shape[0]:
        raise ValueError(
            f"maps must be [C, *g] and [C, *G] with one C, got {tuple(anchor_map.shape)} and "
            f"{tuple(window_map.shape)}"
        )
    room = [w - a for a, w in zip(anchor_map.shape[1:], window_map.shape[1:])]
    if any(r < 0 or r % 2 for r in room):
        raise ValueError(
            f"the window {list(window_map.shape[1:])} must exceed the anchor "
            f"{list(anchor_map.shape[1:])} by an even number of tokens per axis"
        )
    kernel = F.normalize(anchor_map.float(), dim=0)[None]  # [1, C, *g]
    keys = F.normalize(window_map.float(), dim=0)[None]
    scores = F.conv3d(keys, kernel)[0, 0] / math.prod(anchor_map.shape[1:])  # mean cosine
    best = int(scores.flatten().argmax())
    index = torch.tensor(list(torch.unravel_index(torch.tensor(best), scores.shape)))
    confidence = scores.flatten()[best]
    kept = bool(confidence >= threshold)
    shift = index - torch.tensor(room) // 2 if kept else torch.zeros(3, dtype=torch.long)
    return shift, confidence, torch.tensor(kept)


class AnatomyPairDataset(CropDataset):
    """Items of ``2 k`` 3D crops: ``k = crops_per_volume`` anchors in volume A, their partners in B.

    A is the item's volume, B another training volume drawn per item; anchor centres are
    uniform in A's body box, redrawn up to ``retries`` times where they fall on air (the
    box's corners), partner centres at the same body coordinates in B
    (:func:`map_body_points`). Keys as :class:`~medssl.data.crops.CropDataset` (rows
    ``0..k-1`` from A, ``k..2k-1`` their partners, in order), so :class:`CropCollate` and the
    methods take it unchanged; the miner finds each anchor's partner at body distance ~0.

    ``refine_margin`` (voxels, 0: off): each partner's window of B, the crop grown by the
    margin on every side around the same centre, under ``window`` ``[k, 1, *(S + 2 m)]``, and
    ``pairs`` ``[k, 2]`` (anchor row, partner row) of the item; nothing else changes.
    """

    def __init__(
        self,
        index: CacheIndex,
        volumes: Sequence[int],
        crop_size: Sequence[int],
        crops_per_volume: int = 2,
        length: int | None = None,
        fixed: bool = False,
        seed: int = 0,
        retries: int = 4,
        refine_margin: int = 0,
    ) -> None:
        super().__init__(index, volumes, crop_size, crops_per_volume, length, None, fixed, seed)
        if len(self.volumes) < 2:
            raise ValueError(f"pairs need at least 2 volumes, got {len(self.volumes)}")
        if retries < 0 or refine_margin < 0:
            raise ValueError(
                f"retries and refine_margin must be >= 0, got {retries} and {refine_margin}"
            )
        self.retries, self.refine_margin = retries, refine_margin

    def anchor_points(self, volume: int, generator: torch.Generator) -> Tensor:
        """``[k, 3]`` points uniform in the body box, each redrawn while on air (``retries`` times)."""
        meta, array = self.index.volumes[volume], self._open(volume)
        points = sample_body_points(meta.body_box, self.crops_per_volume, generator)
        for _ in range(self.retries):
            air = ~on_tissue(array, points, meta.pad_value)
            if not bool(air.any()):
                break
            redrawn = sample_body_points(meta.body_box, int(air.sum()), generator)
            points[air] = redrawn
        return points

    def __getitem__(self, item: int) -> dict:
        a = self.volumes[(item % self.length) % len(self.volumes)]
        g = self.generator(item)
        others = [v for v in self.volumes if v != a]
        b = others[int(torch.randint(len(others), (1,), generator=g))]
        box_a, box_b = self.index.volumes[a].body_box, self.index.volumes[b].body_box
        points = self.anchor_points(a, g)
        images, boxes, ids = [], [], []
        partners = map_body_points(points, box_a, box_b)
        for v, centres in ((a, points), (b, partners)):
            array = self._open(v)[None]
            for start in centred_starts(centres, self.crop_size).tolist():
                images.append(
                    crop_box(array, start, self.crop_size, self.index.volumes[v].pad_value)
                )
                boxes.append(box_of(start, self.crop_size))
            ids += [v] * self.crops_per_volume
        boxes_t = torch.tensor(boxes, dtype=torch.long)
        bodies = torch.cat([
            body_coordinates(boxes_t[: self.crops_per_volume], box_a),
            body_coordinates(boxes_t[self.crops_per_volume :], box_b),
        ])  # fmt: skip
        item = {
            BatchKey.IMAGE: torch.stack(images),
            BatchKey.BOX: boxes_t,
            BatchKey.VOLUME: torch.tensor(ids, dtype=torch.long),
            BatchKey.BODY: bodies,
            BatchKey.SEED: int(torch.randint(0, 2**62, (1,), generator=g)),
        }
        if self.refine_margin > 0:
            item.update(self.partner_windows(b, partners))
        return item

    def partner_windows(self, volume: int, centres: Tensor) -> dict:
        """``window`` ``[k, 1, *(S + 2 m)]`` of ``volume`` around the partner crops, ``pairs`` ``[k, 2]``."""
        m, k = self.refine_margin, self.crops_per_volume
        size = [s + 2 * m for s in self.crop_size]
        array, pad = self._open(volume)[None], self.index.volumes[volume].pad_value
        starts = centred_starts(centres, self.crop_size) - m  # the crop's start, minus the margin
        windows = [crop_box(array, start, size, pad) for start in starts.tolist()]
        rows = torch.arange(k)
        pairs = torch.stack([rows, rows + k], 1)
        return {BatchKey.WINDOW: torch.stack(windows), BatchKey.PAIRS: pairs}


class PairCollate(CropCollate):
    """:class:`~medssl.data.crops.CropCollate` that also concatenates ``window`` and offsets
    ``pairs`` to batch rows; it never augments (the method refines first, then augments)."""

    def __init__(self, views: int = 0) -> None:
        super().__init__(None, views)

    def __call__(self, items: list[dict]) -> dict:
        batch = super().__call__(items)
        offsets = torch.tensor([0] + [len(it[BatchKey.IMAGE]) for it in items[:-1]]).cumsum(0)
        batch[BatchKey.WINDOW] = torch.cat([it[BatchKey.WINDOW] for it in items])
        batch[BatchKey.PAIRS] = torch.cat(
            [it[BatchKey.PAIRS] + o for it, o in zip(items, offsets.tolist())]
        )
        return batch


class AnatomyPairDataModule(PretrainDataModule):
    """:class:`~medssl.data.pretrain.PretrainDataModule` whose training items are anchor/partner
    pairs (:class:`AnatomyPairDataset`): ``crops_per_volume`` anchors and as many partners per
    item, so N = batch_size x 2 x crops_per_volume; validation crops stay random.

    ``refine_margin`` (voxels per side, 0: off; a multiple of the backbone's total stride):
    training batches carry each partner's window of that margin and arrive unaugmented with
    their ``seed``; the method refines the partners, then calls :meth:`augment_batch`, the
    same seeded augmentation the batch would otherwise have had here.
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
        refine_margin: int = 0,
    ) -> None:
        if refine_margin < 0:
            raise ValueError(f"refine_margin {refine_margin}: expected >= 0 voxels (0: off)")
        super().__init__(
            store, crop_size, crops_per_volume=crops_per_volume, batch_size=batch_size,
            num_workers=num_workers, val_fraction=val_fraction, seed=seed, views=views,
            samples_per_epoch=samples_per_epoch, augment=augment, augment_on=augment_on,
            cache_workers=cache_workers, pin_memory=pin_memory, prefetch_factor=prefetch_factor,
            progress=progress,
        )  # fmt: skip
        self.refine_margin = refine_margin

    def collate_fn(self) -> Callable[[list[dict]], dict]:
        return PairCollate(self.views) if self.refine_margin > 0 else super().collate_fn()

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if BatchKey.WINDOW in batch:  # the method refines the partners, then augments
            return batch
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        super().setup(stage)
        random = self.train_set
        if len(random.volumes) < 2:
            raise ValueError(
                f"store {self.store}: anatomy pairs need at least 2 training volumes, got "
                f"{len(random.volumes)}; use PretrainDataModule for a single volume"
            )
        self.train_set = AnatomyPairDataset(
            random.index, random.volumes, random.crop_size, random.crops_per_volume,
            length=random.length, seed=random.seed, refine_margin=self.refine_margin,
        )  # fmt: skip
