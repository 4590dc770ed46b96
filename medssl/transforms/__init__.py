"""Array transforms on torch tensors, batched augmentation, boxes and crops, multi-crop, keyed RNG.

Imports torch, numpy and scipy only (DESIGN.md section 2). Shapes: a volume ``[C, *spatial]``,
a batch ``[B, C, *spatial]``, 2 or 3 spatial axes in the store's RAS voxel order.
"""

from __future__ import annotations

from medssl.transforms.base import RandomBase
from medssl.transforms.geometric import (
    AffineWarp,
    Flip,
    RandAffine,
    RandFlip,
    RandRotate90,
    Rotate90,
    rotation_matrix,
)
from medssl.transforms.intensity import (
    Blur,
    Gamma,
    Noise,
    NormaliseIntensity,
    RandBlur,
    RandGamma,
    RandNoise,
    RandScaleShift,
    ScaleShift,
)
from medssl.transforms.multi_crop import MultiCrop
from medssl.transforms.pipeline import AugmentConfig, BatchAugment, Composed
from medssl.transforms.rng import derive_seed, keyed_generator
from medssl.transforms.spatial import (
    CropOrPad,
    Resample,
    center_crop_or_pad,
    crop_box,
    resample_to_spacing,
    resampled_shape,
)
from medssl.transforms.views import (
    base_grid,
    crop_boxes,
    grid_boxes,
    random_boxes,
    random_resized_boxes,
    sample_crop_starts,
)

__all__ = [
    "AffineWarp",
    "AugmentConfig",
    "BatchAugment",
    "Blur",
    "Composed",
    "CropOrPad",
    "Flip",
    "Gamma",
    "MultiCrop",
    "Noise",
    "NormaliseIntensity",
    "RandAffine",
    "RandBlur",
    "RandFlip",
    "RandGamma",
    "RandNoise",
    "RandRotate90",
    "RandScaleShift",
    "RandomBase",
    "Resample",
    "Rotate90",
    "ScaleShift",
    "base_grid",
    "center_crop_or_pad",
    "crop_box",
    "crop_boxes",
    "derive_seed",
    "grid_boxes",
    "keyed_generator",
    "random_boxes",
    "random_resized_boxes",
    "resample_to_spacing",
    "resampled_shape",
    "rotation_matrix",
    "sample_crop_starts",
]
