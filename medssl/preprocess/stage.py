"""The plan's preprocessing of one volume: the same function for the training cache and for serving.

Normalisation comes before resampling so clipped outliers (CT padding at -3024 HU, metal)
never smear into their neighbours. A label map on the volume's grid goes through
:func:`preprocess_labels`: nearest-neighbour resampling onto exactly the same grid.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from medssl.store.plan import Plan
from medssl.transforms.intensity import NormaliseIntensity
from medssl.transforms.spatial import resample_to_spacing


def preprocess(array: np.ndarray, spacing: tuple[float, ...], modality: str | None, plan: Plan) -> tuple[np.ndarray, tuple[float, ...]]:
    """A store volume ``[X, Y, Z]`` → the preprocessed ``[X', Y', Z']`` (plan dtype) and the spacing reached."""
    norm = NormaliseIntensity(**dataclasses.asdict(plan.norm_for(modality)))
    x = norm(torch.from_numpy(np.asarray(array, dtype=np.float32))[None])
    x, reached = resample_to_spacing(x, spacing, plan.target_spacing, "linear")
    return x[0].numpy().astype(plan.cache_dtype), reached


def preprocess_labels(labels: np.ndarray, spacing: tuple[float, ...], plan: Plan) -> np.ndarray:
    """A label map ``[X, Y, Z]`` on a store volume's grid → ``[X', Y', Z']`` on the preprocessed grid (nearest)."""
    if labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"label values must lie in 0..65535, got {labels.min()}..{labels.max()}")
    x = torch.from_numpy(np.asarray(labels, dtype=np.float32))[None]
    x, _ = resample_to_spacing(x, spacing, plan.target_spacing, "nearest")
    out = x[0].round().numpy()
    return out.astype(np.uint8 if out.max() < 256 else np.uint16)
