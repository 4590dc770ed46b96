"""Masked-patch plumbing of the anatomy method: patch masks to voxels, patches of a crop, masked means.

Patches follow the backbone's last feature map: a crop ``[M, 1, *grid * stride]`` has
``P = prod(grid)`` patches of ``prod(stride)`` voxels, in the map's token order (SimMIM's
masking aligned with the encoder's stride, Xie et al. 2022).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from medssl.losses import global_mean_scale, masked_reconstruction_loss


def masked_mean_term(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """:func:`masked_reconstruction_loss` (L2) as this rank's share of the global-batch mean; 0 with a graph when nothing is masked here."""
    scale = global_mean_scale(mask.sum())
    if not bool(mask.any()):
        return prediction.sum() * 0.0
    return masked_reconstruction_loss(prediction, target, mask, "l2") * scale


def upsample_mask(mask: Tensor, grid: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    """Patch mask ``[M, P]`` on the last map's grid -> voxel mask ``[M, 1, *grid * stride]``."""
    out = mask.reshape(mask.shape[0], 1, *grid)
    for axis, s in enumerate(stride):
        out = out.repeat_interleave(s, dim=2 + axis)
    return out


def patchify(x: Tensor, grid: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    """``[M, 1, *grid * stride] -> [M, P, prod(stride)]``, patches in the last map's token order."""
    m, d = x.shape[0], len(grid)
    shape = [m]
    for g, s in zip(grid, stride):
        shape += [g, s]
    x = x.reshape(*shape)
    order = [0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2)]
    return x.permute(*order).reshape(m, math.prod(grid), math.prod(stride))


def pooled_patches(
    x: Tensor, grid: tuple[int, ...], stride: tuple[int, ...], target: tuple[int, ...]
) -> Tensor:
    """``[M, 1, *grid * stride] -> [M, P, prod(target)]``: each patch average-pooled to ``target`` voxels."""
    kernel = tuple(s // t for s, t in zip(stride, target))
    if any(k > 1 for k in kernel):
        pool = F.avg_pool3d if len(grid) == 3 else F.avg_pool2d
        x = pool(x, kernel, kernel)
    return patchify(x, grid, target)
