"""Per-volume spatial transforms: resampling to a spacing, cropping and padding.

A volume is ``[C, *spatial]`` (numpy or torch); outputs are torch tensors. Boxes are
voxel coordinates ``[start_0, .., start_S-1, end_0, .., end_S-1]`` (end exclusive) in the
frame of the input; a box may reach outside the volume, and what lies outside is padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

_MODES = {"linear": {2: "bilinear", 3: "trilinear"}, "nearest": {2: "nearest-exact", 3: "nearest-exact"}}


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """The voxel count per axis that keeps the field of view at ``target`` spacing (at least 1)."""
    if len(shape) != len(spacing) or len(shape) != len(target):
        raise ValueError(f"shape {tuple(shape)}, spacing {tuple(spacing)} and target {tuple(target)} differ in length")
    if any(s <= 0 for s in (*spacing, *target)):
        raise ValueError(f"spacings must be positive: {tuple(spacing)} → {tuple(target)}")
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target))


def resample_to_spacing(x: torch.Tensor | np.ndarray, spacing: Sequence[float], target: Sequence[float], mode: str = "linear") -> tuple[torch.Tensor, tuple[float, ...]]:
    """Resample ``x`` ``[C, *spatial]`` from ``spacing`` to about ``target`` (mm).

    The field of view is kept (edges aligned, ``align_corners=False``), so the spacing
    reached is ``shape * spacing / new_shape``, returned with the tensor. ``mode``:
    ``"linear"`` (tri/bilinear: images) or ``"nearest"`` (label maps keep their values).
    """
    if mode not in _MODES:
        raise ValueError(f"resampling mode '{mode}': expected linear or nearest")
    x = torch.as_tensor(x)
    dims = x.ndim - 1
    if dims not in (2, 3) or len(spacing) != dims:
        raise ValueError(f"volume of shape {tuple(x.shape)} with spacing {tuple(spacing)}: expected [C, *spatial] with 2 or 3 spatial axes")
    new_shape = resampled_shape(x.shape[1:], spacing, target)
    reached = tuple(float(n * s / m) for n, s, m in zip(x.shape[1:], spacing, new_shape))
    if new_shape == tuple(x.shape[1:]):
        return x, reached
    dtype = x.dtype
    src = x.float() if mode == "linear" or not x.is_floating_point() else x
    out = F.interpolate(src[None], size=new_shape, mode=_MODES[mode][dims], **({"align_corners": False} if mode == "linear" else {}))[0]
    if mode == "nearest" or not dtype.is_floating_point:
        out = out.round().to(dtype) if not dtype.is_floating_point else out.to(dtype)
    return out, reached


class Resample:
    """``Resample(target)(x, spacing) -> (x', spacing')``: :func:`resample_to_spacing` with fixed target."""

    def __init__(self, target_spacing: Sequence[float], mode: str = "linear") -> None:
        self.target_spacing, self.mode = tuple(float(t) for t in target_spacing), mode

    def __call__(self, x: torch.Tensor | np.ndarray, spacing: Sequence[float]) -> tuple[torch.Tensor, tuple[float, ...]]:
        return resample_to_spacing(x, spacing, self.target_spacing, self.mode)


def box_of(start: Sequence[int], size: Sequence[int]) -> list[int]:
    return [int(s) for s in start] + [int(s) + int(n) for s, n in zip(start, size)]


def crop_box(volume: torch.Tensor | np.ndarray, start: Sequence[int], size: Sequence[int], pad_value: float = 0.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``volume[:, start:start + size]`` as a ``[C, *size]`` tensor, padded where the box leaves the volume.

    Reads only the box: on a memory-mapped array the rest of the file is never touched.
    """
    spatial = volume.shape[1:]
    if len(start) != len(spatial) or len(size) != len(spatial):
        raise ValueError(f"box start {tuple(start)} / size {tuple(size)} for a volume of shape {tuple(volume.shape)}")
    if any(int(n) < 1 for n in size):
        raise ValueError(f"crop size {tuple(size)}: every side must be at least 1")
    src, dst = [], []
    for s, n, dim in zip(start, size, spatial):
        lo, hi = max(0, int(s)), min(int(dim), int(s) + int(n))
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - int(s), lo - int(s) + max(0, hi - lo)))
    region = volume[(slice(None), *src)]
    if isinstance(region, np.ndarray):
        region = torch.from_numpy(np.array(region))  # the only read of the file (torch converts float16 faster)
    region = region.to(dtype)
    if tuple(region.shape[1:]) == tuple(int(n) for n in size):
        return region.clone() if isinstance(volume, torch.Tensor) else region
    out = torch.full((volume.shape[0], *[int(n) for n in size]), float(pad_value), dtype=dtype)
    out[(slice(None), *dst)] = region
    return out


def center_crop_or_pad(volume: torch.Tensor | np.ndarray, size: Sequence[int], pad_value: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """The centred ``[C, *size]`` window of ``volume`` (padded where it is smaller) and its box."""
    start = [(int(d) - int(n)) // 2 for d, n in zip(volume.shape[1:], size)]
    return crop_box(volume, start, size, pad_value), box_of(start, size)


class CropOrPad:
    """``CropOrPad(size)(x) -> [C, *size]``: centred crop, padding with ``pad_value`` where short."""

    def __init__(self, size: Sequence[int], pad_value: float = 0.0) -> None:
        self.size, self.pad_value = tuple(int(s) for s in size), pad_value

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        return center_crop_or_pad(x, self.size, self.pad_value)[0]
