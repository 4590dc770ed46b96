"""Batched geometric augmentation: flips, 90° rotations, small rotations with scaling.

Each works on a whole batch ``[B, C, *spatial]`` on the batch's device with per-sample
parameters; twins are invertible (``inverse()``): flips and 90° rotations exactly, affine
warps up to interpolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import torch
import torch.nn.functional as F

from medssl.transforms.base import (
    InPlaceTwin,
    RandomBase,
    bernoulli,
    check_spatial_dims,
    rows_where,
    uniform,
)


@dataclass(frozen=True)
class Flip(InPlaceTwin):
    """Flip sample ``b`` along spatial axis ``a`` where ``mask[b, a]``; ``mask`` ``[B, S]`` bool."""

    mask: torch.Tensor

    def check(self, x: torch.Tensor) -> None:
        if self.mask.shape != (x.shape[0], x.ndim - 2):
            raise ValueError(f"flip mask {tuple(self.mask.shape)} for a batch of shape {tuple(x.shape)}")

    def is_identity(self) -> bool:
        return not bool(self.mask.any())

    def apply_(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        for pattern in {tuple(m) for m in self.mask.tolist()}:  # one flip per set of axes, not per axis
            dims = [2 + a for a, on in enumerate(pattern) if on]
            if dims:
                rows = rows_where(torch.all(self.mask == torch.tensor(pattern), dim=1), x.device)
                x[rows] = x[rows].flip(dims)
        return x

    def inverse(self) -> Flip:
        return self


class RandFlip(RandomBase):
    """Flip each sample along each of ``axes`` (spatial axis numbers) with probability ``prob``."""

    def __init__(self, prob: float = 0.5, axes: tuple[int, ...] | None = None, spatial_dims: int = 3) -> None:
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.axes = tuple(range(spatial_dims)) if axes is None else tuple(axes)
        if any(a not in range(spatial_dims) for a in self.axes):
            raise ValueError(f"flip axes {self.axes}: expected spatial axes in 0..{spatial_dims - 1}")
        self.prob = prob

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Flip:
        mask = torch.zeros(batch_size, self.spatial_dims, dtype=torch.bool)
        for axis in self.axes:
            mask[:, axis] = bernoulli(batch_size, self.prob, generator)
        return Flip(mask)


def rotation_planes(spatial_dims: int) -> list[tuple[int, int]]:
    """Spatial axis pairs a 90° rotation can turn: ``[(0, 1)]`` in 2D, three planes in 3D."""
    return list(combinations(range(spatial_dims), 2))


@dataclass(frozen=True)
class Rotate90(InPlaceTwin):
    """Rotate sample ``b`` by ``k[b]`` quarter turns in plane ``planes[b]`` (``torch.rot90``).

    ``k`` ``[B]`` int in 0..3; ``planes`` ``[B, 2]`` spatial axis pairs. An odd ``k`` needs a
    square plane (the shape must not change within a batch).
    """

    k: torch.Tensor
    planes: torch.Tensor

    def check(self, x: torch.Tensor) -> None:
        if self.k.shape[0] != x.shape[0]:
            raise ValueError(f"{self.k.shape[0]} rotations for a batch of {x.shape[0]}")
        for (a, b), k in zip(self.planes.tolist(), self.k.tolist()):
            if k % 2 and x.shape[2 + a] != x.shape[2 + b]:
                raise ValueError(f"a quarter turn in plane ({a}, {b}) needs equal sides, got {tuple(x.shape[2:])}")

    def is_identity(self) -> bool:
        return not bool((self.k % 4).any())

    def apply_(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        for a, b in {tuple(p) for p in self.planes.tolist()}:
            for k in (1, 2, 3):
                mask = (self.k % 4 == k) & (self.planes[:, 0] == a) & (self.planes[:, 1] == b)
                if mask.any():
                    rows = rows_where(mask, x.device)
                    x[rows] = torch.rot90(x[rows], k, dims=(2 + a, 2 + b))
        return x

    def inverse(self) -> Rotate90:
        return Rotate90((4 - self.k) % 4, self.planes)


class RandRotate90(RandomBase):
    """With probability ``prob`` per sample: 1–3 quarter turns in a plane drawn from ``planes``.

    Pass only square planes of the crop (``planes=[(0, 1)]`` for an axial 96×96×32 crop).
    """

    def __init__(self, prob: float = 0.5, planes: list[tuple[int, int]] | None = None, spatial_dims: int = 3) -> None:
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.planes = rotation_planes(spatial_dims) if planes is None else [tuple(sorted(p)) for p in planes]
        valid = set(rotation_planes(spatial_dims))
        if not self.planes or any(p not in valid for p in self.planes):
            raise ValueError(f"rotation planes {self.planes}: expected pairs from {sorted(valid)}")
        self.prob = prob

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Rotate90:
        apply = bernoulli(batch_size, self.prob, generator)
        k = torch.randint(1, 4, (batch_size,), generator=generator) * apply
        which = torch.randint(0, len(self.planes), (batch_size,), generator=generator)
        planes = torch.tensor(self.planes, dtype=torch.long)[which]
        return Rotate90(k, planes)


def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """``[B, 1]`` (2D) or ``[B, 3]`` (3D, about axes 0, 1, 2 in turn) radians → ``[B, S, S]``."""
    c, s = torch.cos(angles), torch.sin(angles)
    if angles.shape[1] == 1:
        return torch.stack([torch.stack([c[:, 0], -s[:, 0]], 1), torch.stack([s[:, 0], c[:, 0]], 1)], 1)
    eye = torch.eye(3, dtype=angles.dtype).expand(angles.shape[0], 3, 3)
    out = eye.clone()
    for axis, (i, j) in enumerate([(1, 2), (0, 2), (0, 1)]):
        r = eye.clone()
        r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c[:, axis], -s[:, axis], s[:, axis], c[:, axis]
        out = out @ r
    return out


@dataclass(frozen=True)
class AffineWarp(InPlaceTwin):
    """Resample sample ``b`` at ``matrix[b] @ p`` for each output voxel ``p`` (centred voxel coords).

    ``matrix`` ``[B, S, S]`` maps output to input positions about the crop centre (rotation
    and scale; no translation); identity rows are copied, not resampled. ``mode``:
    ``"bilinear"`` (trilinear in 3D) or ``"nearest"`` (label maps).
    """

    matrix: torch.Tensor
    mode: str = "bilinear"
    padding_mode: str = "border"

    def check(self, x: torch.Tensor) -> None:
        dims = x.ndim - 2
        if self.matrix.shape != (x.shape[0], dims, dims):
            raise ValueError(f"affine matrices {tuple(self.matrix.shape)} for a batch of shape {tuple(x.shape)}")

    def _moving(self) -> torch.Tensor:
        eye = torch.eye(self.matrix.shape[-1], dtype=self.matrix.dtype)
        return ~torch.all((self.matrix - eye).abs() < 1e-12, dim=(1, 2))

    def is_identity(self) -> bool:
        return not bool(self._moving().any())

    def apply_(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        moving = self._moving()
        rows = rows_where(moving, x.device)
        theta = _grid_theta(self.matrix[moving], x.shape[2:]).to(device=x.device, dtype=torch.float32)
        src = x[rows].float()
        grid = sampling_grid(theta, src.shape[2:])
        x[rows] = F.grid_sample(src, grid, mode=mode or self.mode, padding_mode=self.padding_mode, align_corners=False).to(x.dtype)
        return x

    def inverse(self) -> AffineWarp:
        return AffineWarp(torch.linalg.inv(self.matrix), self.mode, self.padding_mode)


def _grid_theta(matrix: torch.Tensor, spatial_shape) -> torch.Tensor:
    """Voxel-space matrices → ``affine_grid`` thetas ``[B, S, S + 1]``.

    ``affine_grid`` works in normalised coords u = p / (n / 2) (align_corners=False) with
    its coordinate order reversed (x indexes the last axis): theta = P D⁻¹ A D P.
    """
    half = torch.tensor([n / 2.0 for n in spatial_shape], dtype=matrix.dtype)
    scaled = matrix * half[None, None, :] / half[None, :, None]
    reversed_ = scaled.flip(1).flip(2)
    return torch.cat([reversed_, torch.zeros(*reversed_.shape[:2], 1, dtype=matrix.dtype)], dim=2)


def sampling_grid(theta: torch.Tensor, spatial_shape) -> torch.Tensor:
    """``F.affine_grid(theta, size, align_corners=False)`` built axis by axis: ``[N, *spatial, S]``.

    The grid is affine in each axis, so it is a sum of broadcast 1D ramps; about 8x faster
    than ``affine_grid``'s batched matmul on a CPU.
    """
    n, dims = theta.shape[0], len(spatial_shape)
    ramps = []
    for j in range(dims):  # grid component j runs along spatial axis dims - 1 - j
        axis, size = dims - 1 - j, int(spatial_shape[dims - 1 - j])
        ramp = (torch.arange(size, dtype=theta.dtype, device=theta.device) * 2 + 1) / size - 1
        shape = [1] * (dims + 1)
        shape[1 + axis] = size
        ramps.append(ramp.view(shape))
    grid = torch.empty(n, *[int(s) for s in spatial_shape], dims, dtype=theta.dtype, device=theta.device)
    ones = [1] * dims
    for c in range(dims):
        acc = theta[:, c, dims].view(n, *ones)
        for j in range(dims):
            acc = acc + theta[:, c, j].view(n, *ones) * ramps[j]
        grid[..., c] = acc
    return grid


class RandAffine(RandomBase):
    """With probability ``prob`` per sample: rotate by up to ``max_rotation_deg`` about each
    axis and scale isotropically by a factor in ``scale_range`` (>1 magnifies)."""

    def __init__(
        self,
        prob: float = 0.3,
        max_rotation_deg: float = 15.0,
        scale_range: tuple[float, float] = (0.85, 1.15),
        mode: str = "bilinear",
        padding_mode: str = "border",
        spatial_dims: int = 3,
    ) -> None:
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if scale_range[0] <= 0 or scale_range[0] > scale_range[1]:
            raise ValueError(f"scale_range {scale_range}: expected 0 < low <= high")
        self.prob, self.max_rotation, self.scale_range = prob, math.radians(max_rotation_deg), tuple(scale_range)
        self.mode, self.padding_mode = mode, padding_mode

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> AffineWarp:
        apply = bernoulli(batch_size, self.prob, generator)
        n_angles = 1 if self.spatial_dims == 2 else 3
        angles = torch.stack([uniform(batch_size, -self.max_rotation, self.max_rotation, generator) for _ in range(n_angles)], 1)
        scale = uniform(batch_size, *self.scale_range, generator)
        matrix = rotation_matrix(angles) / scale[:, None, None]
        eye = torch.eye(self.spatial_dims, dtype=matrix.dtype).expand_as(matrix)
        matrix = torch.where(apply[:, None, None], matrix, eye)
        return AffineWarp(matrix, self.mode, self.padding_mode)
