"""Multi-crop: 2 global + L local random resized crops of every region, each crop set augmented.

Paper: Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments" (SwAV), section 3.2. Used by :class:`~medssl.methods.SwAV` (boxes drawn per
batch) and :class:`~medssl.methods.Joint2D3D` (boxes drawn per sample key, so a volume's
slices share one box per crop and a rank split of the batch draws the same boxes; ``groups``
makes them share each crop's augmentation draw too, so every crop of a volume is one
consistently flipped, turned and warped stack).

For crop ``i`` of the plan (globals first), its boxes are drawn (by ``draw_boxes`` when
given, else from the step generator), cut from the regions and resized
(:func:`~medssl.transforms.views.crop_boxes`), then the crop set is augmented batched with
the step generator (:class:`~medssl.transforms.pipeline.BatchAugment`; one draw per group
when ``groups`` is given), before crop ``i + 1``'s boxes are drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from medssl.transforms.pipeline import AugmentConfig, BatchAugment
from medssl.transforms.views import crop_boxes, random_resized_boxes

Shape = tuple[int, ...]
Scale = tuple[float, float]
BoxDraw = Callable[[Shape, Scale, int], Tensor]
"""``(region shape, scale range, crop index) -> [M, 2*d]`` boxes, one per region."""

NUM_GLOBAL = 2


class MultiCrop:
    """2 global then ``num_local`` local crops ``[M, 1, *size]`` of regions ``[M, 1, *S]``.

    Args:
        global_size, local_size: sizes crops are resized to (None: the region size and half
            of it, at least 1).
        num_local: local crops per region (0: the two global crops only).
        global_scale, local_scale: ranges of the region-volume (2D: area) fraction a crop covers.
        augment: the augmentation of every crop set; None: crops are not augmented.
    """

    def __init__(
        self,
        global_size: Sequence[int] | None,
        local_size: Sequence[int] | None,
        num_local: int,
        global_scale: Sequence[float],
        local_scale: Sequence[float],
        augment: AugmentConfig | None,
    ) -> None:
        if num_local < 0:
            raise ValueError(f"num_local crops must be >= 0, got {num_local}")
        self.global_size = None if global_size is None else tuple(int(s) for s in global_size)
        self.local_size = None if local_size is None else tuple(int(s) for s in local_size)
        self.num_local = num_local
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
        self.augment = augment
        self._pipelines: dict[Shape, BatchAugment] = {}

    def plan(self, shape: Shape) -> list[tuple[Shape, Scale]]:
        """``(output size, scale range)`` of each crop for regions of spatial ``shape``."""
        global_size = self.global_size or tuple(shape)
        local_size = self.local_size or tuple(max(1, s // 2) for s in shape)
        return [(global_size, self.global_scale)] * NUM_GLOBAL + [
            (local_size, self.local_scale)
        ] * self.num_local

    def pipeline(self, size: Shape) -> BatchAugment:
        """The augmentation of crops of ``size`` (built once per size)."""
        if size not in self._pipelines:
            self._pipelines[size] = BatchAugment.from_config(self.augment, size)
        return self._pipelines[size]

    def __call__(
        self,
        regions: Tensor,
        generator: torch.Generator,
        draw_boxes: BoxDraw | None = None,
        groups: Tensor | None = None,
    ) -> list[Tensor]:
        """The crops of ``regions`` ``[M, 1, *S]`` (module doc for the order of the draws).

        ``groups`` ``[M]`` integer labels: regions of one label share every augmentation
        parameter of a crop (None: each region draws its own). Boxes come from ``draw_boxes``:
        give the regions of a group one box there.
        """
        shape, m = tuple(regions.shape[2:]), regions.shape[0]
        crops = []
        for index, (size, scale) in enumerate(self.plan(shape)):
            if draw_boxes is None:
                boxes = random_resized_boxes(shape, scale, m, generator)
            else:
                boxes = draw_boxes(shape, scale, index)
            crop = crop_boxes(regions, boxes[:, None], size)[:, 0]  # [M, 1, *size]
            if self.augment is not None:
                crop = self.pipeline(size)(crop, generator, groups)
            crops.append(crop)
        return crops
