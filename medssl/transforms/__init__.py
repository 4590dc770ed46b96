"""Array transforms on torch tensors, their dict wrappers, batched augmentation, view makers.

Imports torch, numpy and scipy only (DESIGN.md section 2). Shapes: a volume ``[C, *spatial]``,
a batch ``[B, C, *spatial]``, 2 or 3 spatial axes in the store's RAS voxel order.
"""

from __future__ import annotations

from medssl.transforms.base import KeyedArray, KeyedRandom, RandomBase
from medssl.transforms.dictionary import (
    CropOrPadd,
    NormaliseIntensityd,
    RandAffined,
    RandBlurd,
    RandCropd,
    RandFlipd,
    RandGammad,
    RandNoised,
    RandRotate90d,
    RandScaleShiftd,
    Resampled,
)
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
from medssl.transforms.pipeline import AugmentConfig, BatchAugment, Composed
from medssl.transforms.spatial import (
    CropOrPad,
    Resample,
    center_crop_or_pad,
    crop_box,
    resample_to_spacing,
    resampled_shape,
)
from medssl.transforms.views import (
    base_grid_crops,
    box_overlap_fraction,
    grid_boxes,
    random_crops,
    random_slices,
    sample_crop_starts,
)

__all__ = [
    "AffineWarp",
    "AugmentConfig",
    "BatchAugment",
    "Blur",
    "Composed",
    "CropOrPad",
    "CropOrPadd",
    "Flip",
    "Gamma",
    "KeyedArray",
    "KeyedRandom",
    "Noise",
    "NormaliseIntensity",
    "NormaliseIntensityd",
    "RandAffine",
    "RandAffined",
    "RandBlur",
    "RandBlurd",
    "RandCropd",
    "RandFlip",
    "RandFlipd",
    "RandGamma",
    "RandGammad",
    "RandNoise",
    "RandNoised",
    "RandRotate90",
    "RandRotate90d",
    "RandScaleShift",
    "RandScaleShiftd",
    "RandomBase",
    "Resample",
    "Resampled",
    "Rotate90",
    "ScaleShift",
    "base_grid_crops",
    "box_overlap_fraction",
    "center_crop_or_pad",
    "crop_box",
    "grid_boxes",
    "random_crops",
    "random_slices",
    "resample_to_spacing",
    "resampled_shape",
    "rotation_matrix",
    "sample_crop_starts",
]
