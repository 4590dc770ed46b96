"""Boxes in crops and through augmentation: clipped into a crop, through flips and quarter turns.

Boxes are voxel-edge ``[N, 2S]`` float32 with classes ``[N]`` int64, as
:mod:`medssl.preprocess.geometry` defines them (the label cache puts them on the cached grid).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medssl.transforms.geometric import Flip, Rotate90


def box_volume(boxes: np.ndarray | torch.Tensor):
    """``[N, 2S]`` → ``[N]`` extent products (0 for empty boxes)."""
    s = boxes.shape[-1] // 2
    sides = boxes[..., s:] - boxes[..., :s]
    sides = sides.clip(min=0) if isinstance(sides, np.ndarray) else sides.clamp_min(0)
    return sides.prod(-1)


def boxes_in_crop(boxes: np.ndarray, classes: np.ndarray, start: Sequence[int], size: Sequence[int], min_visible: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Boxes moved into the frame of the crop at ``start`` of ``size`` and clipped to it.

    A box keeping less than ``min_visible`` of its volume inside the crop is dropped.
    Returns boxes ``[M, 2S]`` float32 in crop voxels and their classes ``[M]``.
    """
    s = len(start)
    if boxes.shape[1] != 2 * s or len(size) != s:
        raise ValueError(f"boxes {boxes.shape} for a crop at {tuple(start)} of size {tuple(size)}")
    offset = np.asarray(list(start) * 2, dtype=np.float32)
    moved = boxes.astype(np.float32) - offset
    limit = np.asarray([0.0] * s + [float(n) for n in size], dtype=np.float32)
    clipped = moved.copy()
    clipped[:, :s] = np.clip(moved[:, :s], 0.0, np.asarray(size, dtype=np.float32))
    clipped[:, s:] = np.clip(moved[:, s:], 0.0, limit[s:])
    before = box_volume(moved)
    keep = (box_volume(clipped) >= min_visible * before) & (before > 0)
    return clipped[keep], classes[keep]


def flip_boxes(boxes: torch.Tensor, axes: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Boxes ``[N, 2S]`` of a crop of spatial ``shape`` after flipping spatial ``axes``."""
    s = len(shape)
    out = boxes.clone()
    for a in axes:
        start, end = shape[a] - out[:, s + a], shape[a] - out[:, a]
        out[:, a], out[:, s + a] = start, end
    return out


def rot90_boxes(boxes: torch.Tensor, k: int, plane: tuple[int, int], shape: Sequence[int]) -> torch.Tensor:
    """Boxes after ``torch.rot90(x, k, dims=plane)`` of a crop of spatial ``shape``.

    One quarter turn takes input voxel ``(p, q)`` in the plane to ``(n_q - 1 - q, p)``.
    """
    s = len(shape)
    a, b = plane
    shape = list(shape)
    out = boxes.clone()
    for _ in range(k % 4):
        new = out.clone()
        new[:, a], new[:, s + a] = shape[b] - out[:, s + b], shape[b] - out[:, b]
        new[:, b], new[:, s + b] = out[:, a], out[:, s + a]
        out = new
        shape[a], shape[b] = shape[b], shape[a]
    return out


def transform_boxes(boxes: list[torch.Tensor], twins: Sequence, shape: Sequence[int]) -> list[torch.Tensor]:
    """Per-sample boxes through the :class:`Flip` and :class:`Rotate90` twins of a batch (others ignored).

    ``boxes[b]`` ``[N_b, 2S]`` belongs to sample ``b`` of a batch of spatial ``shape``;
    exact, like the flips and quarter turns themselves.
    """
    out = list(boxes)
    for twin in twins:
        if isinstance(twin, Flip):
            for b, row in enumerate(twin.mask.tolist()):
                axes = [a for a, on in enumerate(row) if on]
                if axes and len(out[b]):
                    out[b] = flip_boxes(out[b], axes, shape)
        elif isinstance(twin, Rotate90):
            for b, (k, plane) in enumerate(zip(twin.k.tolist(), twin.planes.tolist())):
                if k % 4 and len(out[b]):
                    out[b] = rot90_boxes(out[b], k, tuple(plane), shape)
    return out
