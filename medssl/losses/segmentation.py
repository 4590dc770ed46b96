"""Segmentation losses: soft Dice + cross-entropy, with deep supervision.

Dice + CE is the nnU-Net default (Isensee et al. 2021, "nnU-Net"): cross-entropy gives
smooth voxel-wise gradients, soft Dice (Milletari et al. 2016, "V-Net") balances small
structures against the background. Deep supervision (Lee et al. 2015, "Deeply-Supervised
Nets") adds the same loss on coarser decoder outputs against nearest-downsampled labels,
with weights halving per scale and normalised to sum to 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1e-5, include_background: bool = False) -> Tensor:
    """``1 - mean Dice`` over classes (and the batch as one region) of softmax ``logits``.

    Args:
        logits: ``[B, K, *spatial]``.
        target: ``[B, *spatial]`` integer labels in ``0..K-1``.
    """
    _check(logits, target)
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    if not include_background and logits.shape[1] > 1:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    dims = (0, *range(2, probs.ndim))  # batch dice: a class absent from one crop still counts
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return 1.0 - dice.mean()


def dice_ce_loss(logits: Tensor, target: Tensor, dice_weight: float = 1.0, ce_weight: float = 1.0) -> Tensor:
    """``dice_weight * soft Dice + ce_weight * cross-entropy`` of ``logits [B, K, *S]`` vs ``target [B, *S]``."""
    _check(logits, target)
    ce = F.cross_entropy(logits.float(), target.long())
    return dice_weight * soft_dice_loss(logits, target) + ce_weight * ce


def deep_supervision_loss(outputs: Tensor | Sequence[Tensor], target: Tensor, dice_weight: float = 1.0, ce_weight: float = 1.0) -> Tensor:
    """Dice + CE on each output (full resolution first), labels nearest-downsampled to each.

    Weights ``1, 1/2, 1/4, ...`` normalised to sum to 1; a single tensor is plain Dice + CE.
    """
    if isinstance(outputs, Tensor):
        return dice_ce_loss(outputs, target, dice_weight, ce_weight)
    if not outputs:
        raise ValueError("deep supervision needs at least one output")
    weights = torch.tensor([0.5**i for i in range(len(outputs))])
    weights = weights / weights.sum()
    total = outputs[0].new_zeros((), dtype=torch.float32)
    for w, logits in zip(weights.tolist(), outputs):
        scaled = target
        if logits.shape[2:] != target.shape[1:]:
            scaled = F.interpolate(target[:, None].float(), size=logits.shape[2:], mode="nearest")[:, 0].long()
        total = total + w * dice_ce_loss(logits, scaled, dice_weight, ce_weight)
    return total


def _check(logits: Tensor, target: Tensor) -> None:
    if logits.ndim != target.ndim + 1 or logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"logits [B, K, *S] and target [B, *S] must agree; got {tuple(logits.shape)} and {tuple(target.shape)}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= logits.shape[1]):
        raise ValueError(f"target labels must lie in 0..{logits.shape[1] - 1}, got {int(target.min())}..{int(target.max())}")
