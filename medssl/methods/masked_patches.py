"""Masked-patch plumbing of the anatomy method: patch masks to voxels, patches of a crop, masked means.

Patches follow the backbone's last feature map: a crop ``[M, 1, *grid * stride]`` has
``P = prod(grid)`` patches of ``prod(stride)`` voxels, in the map's token order (SimMIM's
masking aligned with the encoder's stride, Xie et al. 2022).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from medssl.losses import global_mean_scale, masked_reconstruction_loss
from medssl.transforms.rng import keyed_generator
from medssl.transforms.views import crop_boxes, random_resized_boxes


def patch_stride(size: tuple[int, ...], grid: tuple[int, ...]) -> tuple[int, ...]:
    """Input voxels per last-map position of a crop of ``size``; ValueError unless it tiles exactly."""
    if any(s % g for s, g in zip(size, grid)):
        raise ValueError(
            f"crop size {list(size)} is not a multiple of the last feature map {list(grid)}: "
            "choose a crop size divisible by the backbone's total stride"
        )
    return tuple(s // g for s, g in zip(size, grid))


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


VIEW_BOX_SALT = -7  # keys the view boxes apart from the patch masks


def keyed_patch_masks(step_key: tuple[int, ...], keys: Tensor, views: int, patches: int, mask_ratio: float) -> Tensor:
    """``[views * N, P]`` bool, each row drawn from ``(*step_key, view, key)``, with exactly
    ``round(mask_ratio * P)`` (at least 1, at most P - 1) masked patches per row.

    ``keys`` ``[N]`` name the crops (``batch["index"]`` when given, else the crop's row in the
    global batch), so a crop gets the same mask wherever the batch was split.
    """
    count = min(patches - 1, max(1, round(mask_ratio * patches)))
    rows = []
    for view in range(views):
        for key in keys.tolist():
            g = keyed_generator(*step_key, view, key)
            rows.append(torch.rand(patches, generator=g).argsort() < count)
    return torch.stack(rows)


def keyed_view_boxes(step_key: tuple[int, ...], views: list[Tensor], keys: Tensor, scale: tuple[float, float]) -> Tensor:
    """``[2N, 1, *S]``: view ``v`` of each crop cut from its own random box (area fraction in
    ``scale``) of ``views[v]`` and resized to ``S``; boxes drawn per ``(*step_key, view, key)``."""
    low, high = scale
    if low >= 1.0:
        return torch.cat(list(views))
    shape = tuple(views[0].shape[2:])
    out = []
    for view, image in enumerate(views):
        boxes = torch.stack([
            random_resized_boxes(shape, (low, high), 1, keyed_generator(*step_key, VIEW_BOX_SALT, view, key))[0]
            for key in keys.tolist()
        ])  # fmt: skip
        out.append(crop_boxes(image, boxes[:, None], shape)[:, 0])
    return torch.cat(out)
