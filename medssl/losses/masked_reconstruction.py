"""Reconstruction loss counted on masked positions only.

Papers:
    He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners" (MAE: loss on masked
    patches only, optional per-patch normalised targets); Xie et al. 2022, "SimMIM" (L1 on
    masked pixels). Used by the anatomy-aware method so local detail survives pretraining.

The loss is the mean of ``|pred - target|`` (L1) or ``(pred - target)^2`` (L2) over the
masked elements: the mask is broadcast to the prediction's shape and every element it
covers counts once. A batch without any masked position has no loss to report and raises
ValueError rather than silently returning 0 (it almost always means a broken mask sampler).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

ReconstructionKind = Literal["l1", "l2"]


def broadcast_mask(mask: Tensor, shape: torch.Size) -> Tensor:
    """Bool mask expanded to ``shape``; a mask with fewer dims gets trailing singleton dims.

    E.g. patch tokens ``[B, P, D]`` with a mask ``[B, P]``, or volumes ``[B, C, D, H, W]``
    with a mask ``[B, 1, D, H, W]``.
    """
    if mask.ndim > len(shape):
        raise ValueError(
            f"mask {tuple(mask.shape)} has more dimensions than the prediction {tuple(shape)}"
        )
    mask = mask.reshape(*mask.shape, *([1] * (len(shape) - mask.ndim)))
    if any(m not in (1, s) for m, s in zip(mask.shape, shape)):
        raise ValueError(
            f"mask {tuple(mask.shape)} does not broadcast to the prediction {tuple(shape)}"
        )
    return mask.to(torch.bool).expand(shape)


def normalize_patches(target: Tensor, eps: float = 1e-6) -> Tensor:
    """MAE's normalised targets: each patch ``[..., D]`` to zero mean, unit variance over D."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True, unbiased=False)
    return (target - mean) / (var + eps).sqrt()


def masked_reconstruction_loss(
    prediction: Tensor,
    target: Tensor,
    mask: Tensor,
    kind: ReconstructionKind = "l2",
) -> Tensor:
    """Mean L1 or L2 error over masked elements.

    Args:
        prediction: ``[B, ...]``, e.g. ``[B, P, D]`` patch tokens or ``[B, C, D, H, W]``.
        target: same shape as ``prediction`` (pass it through :func:`normalize_patches` for
            MAE-style targets).
        mask: bool, True = masked (counted); broadcastable as in :func:`broadcast_mask`.
        kind: "l1" or "l2".

    Returns:
        Scalar mean over masked elements.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape"
        )
    if kind not in get_args(ReconstructionKind):
        raise ValueError(f"kind must be 'l1' or 'l2', got {kind!r}")
    full_mask = broadcast_mask(mask, prediction.shape)
    count = full_mask.sum()
    if int(count) == 0:
        raise ValueError("no position is masked: masked reconstruction has nothing to reconstruct")
    error = prediction.float() - target.float()
    error = error.abs() if kind == "l1" else error.pow(2)
    return (error * full_mask).sum() / count
