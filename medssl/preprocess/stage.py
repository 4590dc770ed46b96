"""The plan's preprocessing of one stored array: the same function for the training caches and for serving.

A 3D volume ``[X, Y, Z]`` goes to the plan's ``target_spacing``; a 2D image ``[X, Y]``
(radiograph, ultrasound frame) to its in-plane part ``target_spacing[:2]``. Normalisation
comes before resampling so clipped outliers (CT padding at -3024 HU, metal) never smear
into their neighbours. A label map on the array's grid goes through
:func:`preprocess_labels`: nearest-neighbour resampling onto exactly the same grid.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from medssl.store.plan import Plan
from medssl.transforms.intensity import NormaliseIntensity
from medssl.transforms.spatial import resample_to_spacing

LABEL_MAX = int(np.iinfo(np.uint16).max)  # label maps are cached as uint8 or uint16


def preprocess(array: np.ndarray, spacing: tuple[float, ...], modality: str | None, plan: Plan) -> tuple[np.ndarray, tuple[float, ...]]:
    """A stored volume ``[X, Y, Z]`` or image ``[X, Y]`` → the preprocessed array (plan dtype,
    same number of axes) and the spacing reached (mm)."""
    target = planned_spacing(array, spacing, plan)
    norm = NormaliseIntensity(**dataclasses.asdict(plan.norm_for(modality)))
    x = norm(torch.from_numpy(np.asarray(array, dtype=np.float32))[None])
    x, reached = resample_to_spacing(x, spacing, target, "linear")
    return x[0].numpy().astype(plan.cache_dtype), reached


def preprocess_labels(labels: np.ndarray, spacing: tuple[float, ...], plan: Plan) -> np.ndarray:
    """A label map ``[X, Y, Z]`` (or ``[X, Y]``) on a stored array's grid → the preprocessed
    grid (nearest), uint8 when every value fits, else uint16."""
    target = planned_spacing(labels, spacing, plan)
    if labels.min() < 0 or labels.max() > LABEL_MAX:
        raise ValueError(f"label values must lie in 0..{LABEL_MAX}, got {labels.min()}..{labels.max()}")
    x = torch.from_numpy(np.asarray(labels, dtype=np.float32))[None]
    x, _ = resample_to_spacing(x, spacing, target, "nearest")
    out = x[0].round().numpy()
    return out.astype(np.uint8 if out.max() < 256 else np.uint16)


def planned_spacing(array: np.ndarray, spacing: tuple[float, ...], plan: Plan) -> tuple[float, ...]:
    """The plan's target spacing for ``array``: all of it for 3D, the in-plane part for 2D."""
    if array.ndim not in (2, 3) or len(spacing) != array.ndim:
        raise ValueError(
            f"a 2D image [X, Y] or a 3D volume [X, Y, Z] with one spacing per axis, "
            f"got shape {array.shape} and spacing {tuple(spacing)}"
        )
    return tuple(plan.target_spacing[: array.ndim])
