"""Boxes and the crops cut by them: crop starts in a volume, grids of tiles, random and random
resized boxes in a region, and the batched cut-and-resize every method's views go through.

Boxes are int64 ``(lo_0, ..., lo_{d-1}, hi_0, ..., hi_{d-1})`` voxel coordinates (end
exclusive) in the frame of the volume or region they were cut from, the convention of
:func:`medssl.losses.overlap_labels` (VoCo's position labels are overlaps of random boxes
with grid boxes). Positions are drawn on the CPU from a generator; cutting runs where the
images are. Used by the data modules (:func:`sample_crop_starts`), by VoCo (grid and random
boxes) and by multi-crop (:mod:`medssl.transforms.multi_crop`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

import torch
import torch.nn.functional as F
from torch import Tensor


def sample_crop_starts(
    shape: Sequence[int], size: Sequence[int], n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``[n, S]`` uniform crop starts; the crop stays inside the volume where it fits, else the
    volume sits at a random offset inside the (padded) crop."""
    if len(shape) != len(size):
        raise ValueError(f"crop size {tuple(size)} for a volume of spatial shape {tuple(shape)}")
    cols = []
    for dim, side in zip(shape, size):
        lo, hi = min(0, int(dim) - int(side)), max(0, int(dim) - int(side))
        cols.append(torch.randint(lo, hi + 1, (n,), generator=generator))
    return torch.stack(cols, 1)


def grid_boxes(shape: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """Boxes ``[prod(grid), 2S]`` tiling ``shape`` into ``grid`` parts per axis (C order; missing axes: 1)."""
    if len(grid) > len(shape) or any(g < 1 for g in grid):
        raise ValueError(f"grid {tuple(grid)} for a region of spatial shape {tuple(shape)}")
    grid = list(grid) + [1] * (len(shape) - len(grid))
    if any(g > d for g, d in zip(grid, shape)):
        raise ValueError(f"grid {tuple(grid)} has more tiles than voxels in {tuple(shape)}")
    edges = [[round(i * d / g) for i in range(g + 1)] for d, g in zip(shape, grid)]
    boxes = []
    for index in product(*[range(g) for g in grid]):
        start = [edges[a][i] for a, i in enumerate(index)]
        end = [edges[a][i + 1] for a, i in enumerate(index)]
        boxes.append(start + end)
    return torch.tensor(boxes, dtype=torch.long)


def crop_boxes(images: Tensor, boxes: Tensor, size: Sequence[int] | None = None) -> Tensor:
    """Cut ``boxes`` out of ``images`` and resize each to ``size`` (linear; default: the box size).

    Args:
        images: ``[B, C, *S]`` (2 or 3 spatial axes).
        boxes: ``[B, M, 2*d]`` int boxes inside ``S`` (``[M, 2*d]``: the same boxes for every image).
        size: output spatial size; required when the boxes differ in size.

    Returns:
        ``[B, M, C, *size]``.
    """
    dims = images.ndim - 2
    if boxes.ndim == 2:
        boxes = boxes.unsqueeze(0).expand(images.shape[0], -1, -1)
    if (
        dims not in (2, 3)
        or boxes.ndim != 3
        or boxes.shape[0] != images.shape[0]
        or boxes.shape[2] != 2 * dims
    ):
        raise ValueError(
            f"images [B, C, *S] with 2 or 3 axes and boxes [B, M, {2 * dims}], got {tuple(images.shape)} and {tuple(boxes.shape)}"
        )
    lo, hi = boxes[..., :dims], boxes[..., dims:]
    bounds = torch.tensor(images.shape[2:])
    if bool((lo < 0).any() or (hi > bounds).any() or (hi <= lo).any()):
        raise ValueError(
            f"every box must lie inside the region {tuple(images.shape[2:])} with hi > lo"
        )
    if size is None:
        sides = (hi - lo).reshape(-1, dims).unique(dim=0)
        if sides.shape[0] != 1:
            raise ValueError("boxes of different sizes need an output size")
        size = sides[0].tolist()
    size = [int(s) for s in size]
    mode = "trilinear" if dims == 3 else "bilinear"
    out = []
    for b, image_boxes in enumerate(boxes.tolist()):
        for box in image_boxes:
            crop = images[(b, slice(None), *(slice(box[a], box[dims + a]) for a in range(dims)))]
            if list(crop.shape[1:]) != size:
                crop = F.interpolate(crop[None], size=size, mode=mode, align_corners=False)[0]
            out.append(crop)
    return torch.stack(out).reshape(images.shape[0], boxes.shape[1], images.shape[1], *size)


def base_grid(shape: Sequence[int], grid_size: int, grid_dims: int) -> Tensor:
    """VoCo base crops: ``[grid_size ** grid_dims, 2*d]`` boxes tiling the first ``grid_dims``
    axes of a region of spatial ``shape`` (the others whole), C order."""
    if not 1 <= grid_dims <= len(shape) or grid_size < 1:
        raise ValueError(f"grid {grid_size}^{grid_dims} for a region of {len(shape)} axes")
    return grid_boxes(tuple(shape), [grid_size] * grid_dims)


def random_boxes(
    shape: Sequence[int], box_size: Sequence[int], batch: int, n: int, generator: torch.Generator
) -> Tensor:
    """``[batch, n, 2*d]`` boxes of ``box_size`` at uniform positions inside ``shape``."""
    if len(shape) != len(box_size) or any(b > s or b < 1 for b, s in zip(box_size, shape)):
        raise ValueError(f"box size {tuple(box_size)} does not fit in the region {tuple(shape)}")
    starts = torch.stack(
        [
            torch.randint(0, s - b + 1, (batch, n), generator=generator)
            for s, b in zip(shape, box_size)
        ],
        -1,
    )
    return torch.cat([starts, starts + torch.tensor(list(box_size))], -1)


def random_resized_boxes(
    shape: Sequence[int], scale: tuple[float, float], batch: int, generator: torch.Generator
) -> Tensor:
    """``[batch, 2*d]`` boxes covering a uniform fraction in ``scale`` of the region's volume
    (same aspect as the region), at uniform positions: the "random resized crop" of multi-crop."""
    low, high = scale
    if not 0 < low <= high <= 1:
        raise ValueError(f"scale range {scale}: expected 0 < low <= high <= 1")
    dims = len(shape)
    fraction = low + (high - low) * torch.rand(batch, generator=generator, dtype=torch.float64)
    sides = (
        (torch.tensor(list(shape), dtype=torch.float64)[None] * fraction[:, None] ** (1.0 / dims))
        .round()
        .long()
    )
    sides = torch.minimum(sides.clamp(min=1), torch.tensor(list(shape)))
    room = torch.tensor(list(shape))[None] - sides
    starts = (
        (torch.rand(batch, dims, generator=generator, dtype=torch.float64) * (room + 1))
        .floor()
        .long()
        .clamp(max=room)
    )
    return torch.cat([starts, starts + sides], -1)
