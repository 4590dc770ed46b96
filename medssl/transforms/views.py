"""View makers: random crops with their boxes, base crops on a grid, 2D slices.

Boxes are ``[n, 2 * S]`` int64 voxel coordinates ``(start..., end...)`` (end exclusive) in
the frame of the volume or region they were cut from; VoCo's position labels are the
overlaps of random-crop boxes with base-crop boxes (:func:`box_overlap_fraction`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

import numpy as np
import torch
import torch.nn.functional as F

from medssl.transforms.spatial import box_of, crop_box


def sample_crop_starts(shape: Sequence[int], size: Sequence[int], n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[n, S]`` uniform crop starts; the crop stays inside the volume where it fits, else the
    volume sits at a random offset inside the (padded) crop."""
    if len(shape) != len(size):
        raise ValueError(f"crop size {tuple(size)} for a volume of spatial shape {tuple(shape)}")
    cols = []
    for dim, side in zip(shape, size):
        lo, hi = min(0, int(dim) - int(side)), max(0, int(dim) - int(side))
        cols.append(torch.randint(lo, hi + 1, (n,), generator=generator))
    return torch.stack(cols, 1)


def random_crops(
    volume: torch.Tensor | np.ndarray,
    n: int,
    size: Sequence[int],
    generator: torch.Generator | None = None,
    pad_value: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random crops of ``volume`` ``[C, *S]`` → crops ``[n, C, *size]`` float32, boxes ``[n, 2S]``."""
    starts = sample_crop_starts(volume.shape[1:], size, n, generator)
    crops = torch.stack([crop_box(volume, s.tolist(), size, pad_value) for s in starts])
    boxes = torch.tensor([box_of(s.tolist(), size) for s in starts], dtype=torch.long)
    return crops, boxes


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


def base_grid_crops(region: torch.Tensor | np.ndarray, grid: Sequence[int], size: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut ``region`` ``[C, *S]`` into a ``grid`` of base crops (VoCo): crops ``[prod(grid), C, *size]``, boxes.

    ``grid=(n, n)`` on a 3D region tiles the first two axes and keeps the third whole.
    Tiles are resized (linear) to ``size`` when it differs from the tile (default: ``S // grid``).
    """
    shape = tuple(region.shape[1:])
    boxes = grid_boxes(shape, grid)
    full_grid = list(grid) + [1] * (len(shape) - len(grid))
    size = tuple(int(d) // g for d, g in zip(shape, full_grid)) if size is None else tuple(int(s) for s in size)
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    crops = []
    for box in boxes.tolist():
        tile = crop_box(region, box[: len(shape)], [e - s for s, e in zip(box[: len(shape)], box[len(shape):])])
        if tuple(tile.shape[1:]) != size:
            tile = F.interpolate(tile[None], size=size, mode=mode, align_corners=False)[0]
        crops.append(tile)
    return torch.stack(crops), boxes


def box_overlap_fraction(boxes: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """``[n, 2S]`` × ``[m, 2S]`` → ``[n, m]``: the share of each box's volume inside each other box."""
    if boxes.shape[-1] != others.shape[-1] or boxes.shape[-1] % 2:
        raise ValueError(f"boxes {tuple(boxes.shape)} and {tuple(others.shape)}: expected [n, 2S] and [m, 2S]")
    s = boxes.shape[-1] // 2
    a, b = boxes[:, None, :].double(), others[None, :, :].double()
    sides = (torch.minimum(a[..., s:], b[..., s:]) - torch.maximum(a[..., :s], b[..., :s])).clamp_min(0)
    own = (boxes[:, s:] - boxes[:, :s]).double().prod(-1).clamp_min(1e-12)
    return (sides.prod(-1) / own[:, None]).float()


def random_slices(volume: torch.Tensor | np.ndarray, n: int, axis: int = 2, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random 2D slices across spatial ``axis`` of ``volume`` ``[C, X, Y, Z]`` → ``[n, C, *plane]``, indices ``[n]``.

    Axis 2 (superior) gives axial slices ``[C, X, Y]`` of a RAS store volume.
    """
    if volume.ndim != 4 or axis not in (0, 1, 2):
        raise ValueError(f"volume of shape {tuple(volume.shape)}, axis {axis}: expected [C, X, Y, Z] and axis 0, 1 or 2")
    index = torch.randint(0, volume.shape[1 + axis], (n,), generator=generator)
    slices = []
    for i in index.tolist():
        sl = volume[(slice(None),) * (1 + axis) + (i,)]
        slices.append(torch.from_numpy(np.array(sl, dtype=np.float32)) if isinstance(sl, np.ndarray) else sl.float())
    return torch.stack(slices), index
