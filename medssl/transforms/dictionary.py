"""Dict wrappers (``...d``): pick keys, nothing else; the math lives in the array transforms.

Random wrappers draw parameters once per call and apply the same twin to every key, so
``RandAffined(["image", "label"], modes={"label": "nearest"})`` moves both alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from medssl.transforms.base import KeyedArray, KeyedRandom
from medssl.transforms.geometric import RandAffine, RandFlip, RandRotate90
from medssl.transforms.intensity import (
    NormaliseIntensity,
    RandBlur,
    RandGamma,
    RandNoise,
    RandScaleShift,
)
from medssl.transforms.spatial import CropOrPad, box_of, crop_box, resample_to_spacing
from medssl.transforms.views import sample_crop_starts
from medssl.types import BatchKey


class RandFlipd(KeyedRandom):
    def __init__(self, keys: Sequence[str], prob: float = 0.5, axes: tuple[int, ...] | None = None, spatial_dims: int = 3) -> None:
        super().__init__(keys, RandFlip(prob, axes, spatial_dims))


class RandRotate90d(KeyedRandom):
    def __init__(self, keys: Sequence[str], prob: float = 0.5, planes: list[tuple[int, int]] | None = None, spatial_dims: int = 3) -> None:
        super().__init__(keys, RandRotate90(prob, planes, spatial_dims))


class RandAffined(KeyedRandom):
    def __init__(self, keys: Sequence[str], prob: float = 0.3, max_rotation_deg: float = 15.0, scale_range: tuple[float, float] = (0.85, 1.15), modes: Mapping[str, str] | None = None, spatial_dims: int = 3) -> None:
        super().__init__(keys, RandAffine(prob, max_rotation_deg, scale_range, spatial_dims=spatial_dims), modes)


class RandScaleShiftd(KeyedRandom):
    def __init__(self, keys: Sequence[str], prob: float = 0.5, scale_range: tuple[float, float] = (0.9, 1.1), shift_range: tuple[float, float] = (-0.1, 0.1), spatial_dims: int = 3) -> None:
        super().__init__(keys, RandScaleShift(prob, scale_range, shift_range, spatial_dims))


class RandGammad(KeyedRandom):
    def __init__(self, keys: Sequence[str], prob: float = 0.3, gamma_range: tuple[float, float] = (0.7, 1.5), spatial_dims: int = 3) -> None:
        super().__init__(keys, RandGamma(prob, gamma_range, spatial_dims))


class RandNoised(KeyedRandom):
    def __init__(self, keys: Sequence[str], prob: float = 0.2, std_range: tuple[float, float] = (0.0, 0.1), spatial_dims: int = 3) -> None:
        super().__init__(keys, RandNoise(prob, std_range, spatial_dims))


class RandBlurd(KeyedRandom):
    def __init__(self, keys: Sequence[str], prob: float = 0.2, sigma_range: tuple[float, float] = (0.5, 1.0), spatial_dims: int = 3) -> None:
        super().__init__(keys, RandBlur(prob, sigma_range, spatial_dims))


class NormaliseIntensityd(KeyedArray):
    def __init__(self, keys: Sequence[str], kind: str = "zscore", lower: float | None = None, upper: float | None = None, mean: float | None = None, std: float | None = None) -> None:
        super().__init__(keys, NormaliseIntensity(kind, lower, upper, mean, std))


class CropOrPadd(KeyedArray):
    def __init__(self, keys: Sequence[str], size: Sequence[int], pad_value: float = 0.0) -> None:
        super().__init__(keys, CropOrPad(size, pad_value))


class Resampled:
    """Resample each key to ``target_spacing``; the sample's spacing is read from ``spacing_key``
    and replaced by the spacing reached. ``modes`` per key: ``"linear"`` (default) or ``"nearest"``."""

    def __init__(self, keys: Sequence[str], target_spacing: Sequence[float], spacing_key: str = BatchKey.SPACING, modes: Mapping[str, str] | None = None) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.target, self.spacing_key, self.modes = tuple(float(t) for t in target_spacing), spacing_key, dict(modes or {})

    def __call__(self, data: Mapping) -> dict:
        out = dict(data)
        spacing = [float(s) for s in data[self.spacing_key]]
        reached = tuple(spacing)
        for key in self.keys:
            out[key], reached = resample_to_spacing(data[key], spacing, self.target, self.modes.get(key, "linear"))
        out[self.spacing_key] = reached
        return out


class RandCropd:
    """One random ``size`` crop, the same box for every key; the box goes to ``box_key``."""

    def __init__(self, keys: Sequence[str], size: Sequence[int], box_key: str = BatchKey.BOX, pad_values: Mapping[str, float] | None = None) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.size, self.box_key, self.pad_values = tuple(int(s) for s in size), box_key, dict(pad_values or {})

    def __call__(self, data: Mapping[str, torch.Tensor | np.ndarray], generator: torch.Generator | None = None) -> dict:
        start = sample_crop_starts(data[self.keys[0]].shape[1:], self.size, 1, generator)[0].tolist()
        out = dict(data)
        for key in self.keys:
            out[key] = crop_box(data[key], start, self.size, self.pad_values.get(key, 0.0))
        out[self.box_key] = torch.tensor(box_of(start, self.size), dtype=torch.long)
        return out
