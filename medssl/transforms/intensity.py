"""Intensity: the plan's normalisation (per volume) and batched intensity augmentation.

Augmentations take a batch ``[B, C, *spatial]`` with per-sample parameters ``[B]``; a
sample the draw leaves out gets the identity parameter (scale 1, shift 0, gamma 1,
noise 0, sigma 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medssl.transforms.base import (
    InPlaceTwin,
    RandomBase,
    bernoulli,
    check_spatial_dims,
    per_sample,
    rows_where,
    uniform,
)

_EPS = 1e-8


class NormaliseIntensity:
    """A plan's intensity normalisation for one volume ``[C, *spatial]`` (numpy or torch → torch float32).

    ``kind``: ``"clip_zscore"`` clip to [lower, upper] then (x - mean) / std (dataset
    statistics); ``"window"`` clip to [lower, upper] then scale to [0, 1]; ``"zscore"``
    each channel by its own mean and std. Built from ``IntensityNorm`` fields:
    ``NormaliseIntensity(**dataclasses.asdict(plan.norm_for(modality)))``.
    """

    def __init__(self, kind: str = "zscore", lower: float | None = None, upper: float | None = None, mean: float | None = None, std: float | None = None) -> None:
        if kind not in ("clip_zscore", "window", "zscore"):
            raise ValueError(f"normalisation kind '{kind}': expected clip_zscore, window or zscore")
        if kind != "zscore" and (lower is None or upper is None or lower >= upper):
            raise ValueError(f"{kind} needs lower < upper, got {lower}, {upper}")
        if kind == "clip_zscore" and (mean is None or std is None or std <= 0):
            raise ValueError(f"clip_zscore needs a mean and a positive std, got {mean}, {std}")
        self.kind, self.lower, self.upper, self.mean, self.std = kind, lower, upper, mean, std

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(x).float()
        if self.kind == "clip_zscore":
            return (x.clamp(self.lower, self.upper) - self.mean) / self.std
        if self.kind == "window":
            return (x.clamp(self.lower, self.upper) - self.lower) / (self.upper - self.lower)
        flat = x.reshape(x.shape[0], -1).double()
        mean = flat.mean(1).float().view(-1, *([1] * (x.ndim - 1)))
        std = flat.std(1, correction=0).float().clamp_min(_EPS).view(-1, *([1] * (x.ndim - 1)))
        return (x - mean) / std


# deterministic twins --------------------------------------------------------------------
@dataclass(frozen=True)
class ScaleShift(InPlaceTwin):
    """``x * scale[b] + shift[b]`` per sample."""

    scale: torch.Tensor
    shift: torch.Tensor

    def is_identity(self) -> bool:
        return bool(torch.all(self.scale == 1) and torch.all(self.shift == 0))

    def apply_(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        return x.mul_(per_sample(self.scale, x)).add_(per_sample(self.shift, x))


@dataclass(frozen=True)
class Gamma(InPlaceTwin):
    """Per sample: rescale to [0, 1] by its min and max, raise to ``gamma[b]``, scale back (nnU-Net's
    gamma, defined for z-scored data with negative values)."""

    gamma: torch.Tensor

    def is_identity(self) -> bool:
        return bool(torch.all(self.gamma == 1))

    def apply_(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        moving = self.gamma != 1.0
        rows = rows_where(moving, x.device)
        sub = x[rows]
        flat = sub.reshape(sub.shape[0], -1)
        lo = per_sample(flat.min(1).values, sub)
        span = per_sample(flat.max(1).values, sub) - lo
        unit = ((sub - lo) / (span + _EPS)).clamp_(0, 1)
        x[rows] = unit.pow_(per_sample(self.gamma[moving], sub)).mul_(span).add_(lo)
        return x


@dataclass(frozen=True)
class Noise(InPlaceTwin):
    """``x + std[b] * N(0, 1)``; the noise fields (of the samples with ``std > 0``) come from ``seed`` on the data's device."""

    std: torch.Tensor
    seed: int

    def is_identity(self) -> bool:
        return not bool(torch.any(self.std > 0))

    def apply_(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        moving = self.std > 0
        rows = rows_where(moving, x.device)
        g = torch.Generator(device=x.device).manual_seed(self.seed)
        noise = torch.randn((len(rows), *x.shape[1:]), generator=g, device=x.device, dtype=torch.float32)
        x[rows] = x[rows] + noise.mul_(per_sample(self.std[moving], noise)).to(x.dtype)
        return x


@dataclass(frozen=True)
class Blur(InPlaceTwin):
    """Separable Gaussian blur with ``sigma[b]`` voxels per sample (0: unchanged), edges replicated."""

    sigma: torch.Tensor

    def is_identity(self) -> bool:
        return not bool(torch.any(self.sigma > 0))

    def apply_(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        moving = self.sigma > 0
        rows = rows_where(moving, x.device)
        sub = x[rows].float()
        radius = max(1, math.ceil(3.0 * float(self.sigma.max())))
        weights = gaussian_kernels(self.sigma[moving], radius).to(sub.device)  # [k, 2r + 1]
        w = weights.view(weights.shape[0], 1, *([1] * (x.ndim - 2)), weights.shape[1])
        for axis in range(x.ndim - 2):
            sub = _convolve_axis(sub, w, axis, radius)
        x[rows] = sub.to(x.dtype)
        return x


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """``[B]`` sigmas → ``[B, 2 * radius + 1]`` normalised Gaussian kernels (float32)."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t[None, :] / sigma.double().clamp_min(1e-6)[:, None]) ** 2)
    return (k / k.sum(1, keepdim=True)).float()


def _convolve_axis(x: torch.Tensor, w: torch.Tensor, axis: int, radius: int) -> torch.Tensor:
    """Correlate spatial ``axis`` of ``x`` ``[k, C, *S]`` with per-sample taps ``w`` ``[k, 1, 1.., T]``."""
    dims = x.ndim - 2
    pad = [0, 0] * dims
    pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = radius
    padded = F.pad(x, pad, mode="replicate")
    n = x.shape[2 + axis]
    out = torch.zeros_like(x)
    for tap in range(2 * radius + 1):
        out += w[..., tap] * padded.narrow(2 + axis, tap, n)
    return out


# random transforms ----------------------------------------------------------------------
class RandScaleShift(RandomBase):
    """With probability ``prob``: multiply by a factor in ``scale_range``, add one in ``shift_range``."""

    def __init__(self, prob: float = 0.5, scale_range: tuple[float, float] = (0.9, 1.1), shift_range: tuple[float, float] = (-0.1, 0.1), spatial_dims: int = 3) -> None:
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.prob, self.scale_range, self.shift_range = prob, tuple(scale_range), tuple(shift_range)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> ScaleShift:
        apply = bernoulli(batch_size, self.prob, generator)
        scale = uniform(batch_size, *self.scale_range, generator)
        shift = uniform(batch_size, *self.shift_range, generator)
        return ScaleShift(torch.where(apply, scale, 1.0), torch.where(apply, shift, 0.0))


class RandGamma(RandomBase):
    """With probability ``prob``: gamma drawn from ``gamma_range`` (log-uniform, so <1 and >1 are alike)."""

    def __init__(self, prob: float = 0.3, gamma_range: tuple[float, float] = (0.7, 1.5), spatial_dims: int = 3) -> None:
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if gamma_range[0] <= 0:
            raise ValueError(f"gamma_range {gamma_range}: gammas must be positive")
        self.prob, self.gamma_range = prob, tuple(gamma_range)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Gamma:
        apply = bernoulli(batch_size, self.prob, generator)
        gamma = uniform(batch_size, math.log(self.gamma_range[0]), math.log(self.gamma_range[1]), generator).exp()
        return Gamma(torch.where(apply, gamma, 1.0))


class RandNoise(RandomBase):
    """With probability ``prob``: Gaussian noise of a standard deviation drawn from ``std_range``."""

    def __init__(self, prob: float = 0.2, std_range: tuple[float, float] = (0.0, 0.1), spatial_dims: int = 3) -> None:
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.prob, self.std_range = prob, tuple(std_range)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Noise:
        apply = bernoulli(batch_size, self.prob, generator)
        std = uniform(batch_size, *self.std_range, generator)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return Noise(torch.where(apply, std, 0.0), seed)


class RandBlur(RandomBase):
    """With probability ``prob``: Gaussian blur with sigma (voxels) drawn from ``sigma_range``."""

    def __init__(self, prob: float = 0.2, sigma_range: tuple[float, float] = (0.5, 1.0), spatial_dims: int = 3) -> None:
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if sigma_range[0] < 0:
            raise ValueError(f"sigma_range {sigma_range}: sigmas must be >= 0")
        self.prob, self.sigma_range = prob, tuple(sigma_range)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Blur:
        apply = bernoulli(batch_size, self.prob, generator)
        sigma = uniform(batch_size, *self.sigma_range, generator)
        return Blur(torch.where(apply, sigma, 0.0))
