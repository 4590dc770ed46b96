"""A batched augmentation pipeline with a typed config (what a data module exposes to the CLI).

``BatchAugment`` runs on a whole batch ``[B, C, *spatial]`` on its device: one call per
batch, per-sample parameters. On a GPU it runs there (after the batch is transferred);
on a CPU it runs in the training process. Its ``sample`` returns a :class:`Composed` twin,
so the whole pipeline is reproducible from a generator seed like each of its parts.

Groups: ``groups [B]`` (any integer labels) makes samples with one label share every drawn
parameter, e.g. the 2D slices of one view of a volume, which must be flipped, turned, warped
and rescaled alike to stay a stack (:class:`~medssl.methods.Joint2D3D`). Parameters are drawn
once per group (groups in ascending label order) and repeated to its samples
(:func:`repeat_rows`); noise fields stay independent per sample (only their std is shared).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace

import torch

from medssl.transforms.base import (
    InPlaceTwin,
    RandomTransform,
    Twin,
    apply_batched,
    batch_size_of,
    check_spatial_dims,
)
from medssl.transforms.geometric import RandAffine, RandFlip, RandRotate90, rotation_planes
from medssl.transforms.intensity import RandBlur, RandGamma, RandNoise, RandScaleShift


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (per sample) and ranges of the pretraining augmentations; a probability of 0 turns one off."""

    flip_prob: float = 0.5
    rot90_prob: float = 0.5
    affine_prob: float = 0.3
    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    intensity_prob: float = 0.5
    intensity_scale: tuple[float, float] = (0.9, 1.1)
    intensity_shift: tuple[float, float] = (-0.1, 0.1)
    gamma_prob: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_prob: float = 0.2
    noise_std: tuple[float, float] = (0.0, 0.1)
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)

    @classmethod
    def from_fields(cls, values: Mapping | None) -> AugmentConfig:
        """A config from a dict of its fields (a method's ``augment:`` in YAML; lists become
        tuples, missing fields default); None or empty: the defaults. Unknown fields raise."""
        if not values:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"augment: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass(frozen=True)
class Composed:
    """Twins applied in order."""

    twins: tuple[Twin, ...]

    def __call__(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        active = [t for t in self.twins if not (isinstance(t, InPlaceTwin) and t.is_identity())]
        if not active:
            return x
        out = x.clone()  # the one copy: every in-place step works on it
        for twin in active:
            if isinstance(twin, InPlaceTwin):
                twin.check(out)
                out = twin.apply_(out, mode)
            else:
                out = twin(out, mode)
        return out


def repeat_rows(twin: Twin, index: torch.Tensor) -> Twin:
    """``twin`` with the per-sample parameters of sample ``index[b]`` at row ``b``.

    Every tensor field of a twin holds one row per sample (the package's convention), so
    indexing each of them along its first axis gives the twin of the batch ``index`` selects;
    ``Composed`` is handled step by step. ``index`` ``[B]`` long.
    """
    if isinstance(twin, Composed):
        return Composed(tuple(repeat_rows(t, index) for t in twin.twins))
    if not is_dataclass(twin):
        raise ValueError(
            f"cannot repeat the rows of {type(twin).__name__}: a twin must be a dataclass of "
            "per-sample tensors"
        )
    values = {f.name: getattr(twin, f.name) for f in fields(twin)}
    return replace(twin, **{k: v[index] for k, v in values.items() if isinstance(v, torch.Tensor)})


class BatchAugment:
    """Random transforms applied in order, sharing one generator (``groups``: module doc)."""

    def __init__(self, transforms: Sequence[RandomTransform], spatial_dims: int = 3) -> None:
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if any(t.spatial_dims != spatial_dims for t in transforms):
            raise ValueError(f"every transform must have spatial_dims={spatial_dims}")
        self.transforms = list(transforms)

    @classmethod
    def from_config(cls, config: AugmentConfig, crop_size: Sequence[int]) -> BatchAugment:
        """The pipeline ``config`` describes for crops of ``crop_size`` (quarter turns only in its square planes)."""
        dims = check_spatial_dims(len(crop_size))
        steps: list[RandomTransform] = []
        if config.flip_prob > 0:
            steps.append(RandFlip(config.flip_prob, spatial_dims=dims))
        square = [p for p in rotation_planes(dims) if crop_size[p[0]] == crop_size[p[1]]]
        if config.rot90_prob > 0 and square:
            steps.append(RandRotate90(config.rot90_prob, square, spatial_dims=dims))
        if config.affine_prob > 0:
            steps.append(RandAffine(config.affine_prob, config.max_rotation_deg, config.scale_range, spatial_dims=dims))
        if config.intensity_prob > 0:
            steps.append(RandScaleShift(config.intensity_prob, config.intensity_scale, config.intensity_shift, spatial_dims=dims))
        if config.gamma_prob > 0:
            steps.append(RandGamma(config.gamma_prob, config.gamma_range, spatial_dims=dims))
        if config.blur_prob > 0:
            steps.append(RandBlur(config.blur_prob, config.blur_sigma, spatial_dims=dims))
        if config.noise_prob > 0:
            steps.append(RandNoise(config.noise_prob, config.noise_std, spatial_dims=dims))
        return cls(steps, dims)

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        groups: torch.Tensor | None = None,
    ) -> Composed:
        """The twin of a batch of ``batch_size``; with ``groups [batch_size]``, one draw per group."""
        if groups is None:
            return Composed(tuple(t.sample(batch_size, generator) for t in self.transforms))
        if groups.shape != (batch_size,) or groups.is_floating_point():
            raise ValueError(
                f"groups must be [{batch_size}] integer labels (one per sample), "
                f"got {tuple(groups.shape)} {groups.dtype}"
            )
        labels, index = groups.cpu().unique(return_inverse=True)
        twins = tuple(t.sample(len(labels), generator) for t in self.transforms)
        return repeat_rows(Composed(twins), index)

    def __call__(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        groups: torch.Tensor | None = None,
    ) -> torch.Tensor:
        twin = self.sample(batch_size_of(x, self.spatial_dims), generator, groups)
        return apply_batched(twin, x, self.spatial_dims)
