"""VoCo: volume contrast with geometric context priors.

Papers:
    Wu, Zhuang, Chen, "VoCo: A Simple-yet-Effective Volume Contrastive Learning Framework for
    3D Medical Image Analysis", CVPR 2024 (arXiv:2402.17300);
    Wu, Zhuang, Chen, "Large-Scale 3D Medical Image Pre-training with Geometric Context
    Priors", arXiv:2410.09890 (the extended version: EMA teacher, inter-volume term).

A region of a volume is cut into a grid of K base crops; N random crops are drawn from the
same region. A crop's position label is the fraction of its volume inside each base crop
(:func:`overlap_labels`). The model predicts it from the similarity of the crop's embedding
to each base embedding, ``p_k = max(0, cos(c, b_k))`` (:func:`position_logits`).

Position loss (:func:`position_loss`), per volume, with ``d_k = |y_k - p_k|``::

    L_pos = sum_{n,k} y_k * -log(1 - d_k + eps) / sum_{n,k} y_k         (overlapping bases)
          + mean_{(n,k): y_k = 0} -log(1 - p_k + eps)                    (bases not touched)

This is the paper's ``-log(1 - |y - p|)`` (CVPR 2024, Eq. 3) split in two as in the
authors' released code: the overlapping bases are weighted by their label, and the many
non-overlapping bases form their own mean so they cannot drown the few positive ones. It is
zero when ``p = y`` (to within eps) and rises steeply towards ``-log(eps)`` as
``|y - p| -> 1``. Chosen over a softmax cross-entropy because VoCo reads each clamped cosine
as the overlap fraction itself: this loss pins the absolute value of every similarity (0 for
bases a crop does not touch), where a softmax would only fix their ratios.

Base regulariser (:func:`base_regularization`): mean over ordered pairs ``i != j`` of
``max(0, cos(b_i, b_j))^2`` (the released code's form; both sides of a pair get gradient
here): zero when the bases are orthogonal (or opposed), so base embeddings of different
positions stay distinct.

Inter-volume consistency (:func:`inter_volume_loss`, extended version): volumes share their
geometric context, so the crops of volume b are also scored against the bases of another
volume b' (here ``b' = b + 1 mod B``); the student's prediction must match the EMA teacher's
(detached) prediction under the same position loss.

The intra-volume prediction always compares the student's crops to the student's bases
(CVPR form), with or without a teacher. The extended version's code scores student crops
against the teacher's detached bases; from a random start that leaves the student bases
no position gradient, and with near-identical bases the regulariser's gradient vanishes
too (cos = 1 is a stationary point), so the bases stayed collapsed in our runs. The
teacher serves the inter-volume term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-6


def overlap_labels(crop_boxes: Tensor, base_boxes: Tensor) -> Tensor:
    """Fraction of each crop's volume (area in 2D) that lies in each base crop.

    Boxes are axis-aligned, ``(lo_0, ..., lo_{d-1}, hi_0, ..., hi_{d-1})`` with ``hi > lo``
    (the "xyzxyz" convention), in any one unit (voxels or mm) shared by both arguments.

    Args:
        crop_boxes: ``[B, N, 2*d]`` random crops.
        base_boxes: ``[B, K, 2*d]`` base crops, or ``[K, 2*d]`` shared by all volumes.

    Returns:
        ``[B, N, K]`` labels in [0, 1]; rows sum to 1 when the crop lies inside the grid and
        the base crops tile it without overlap.
    """
    if base_boxes.ndim == 2:
        base_boxes = base_boxes.unsqueeze(0).expand(crop_boxes.shape[0], -1, -1)
    if crop_boxes.ndim != 3 or base_boxes.ndim != 3:
        raise ValueError(
            f"boxes must be [B, N, 2*d] and [B, K, 2*d], got {tuple(crop_boxes.shape)} "
            f"and {tuple(base_boxes.shape)}"
        )
    width = crop_boxes.shape[-1]
    if (
        width == 0
        or width % 2
        or base_boxes.shape[-1] != width
        or base_boxes.shape[0] != crop_boxes.shape[0]
    ):
        raise ValueError(
            f"crop and base boxes need one batch size and one even last dimension 2*d, got "
            f"{tuple(crop_boxes.shape)} and {tuple(base_boxes.shape)}"
        )
    dims = width // 2
    crops = crop_boxes.to(torch.promote_types(crop_boxes.dtype, torch.float32))
    bases = base_boxes.to(crops.dtype)
    crop_lo, crop_hi = (
        crops[..., :dims].unsqueeze(2),
        crops[..., dims:].unsqueeze(2),
    )  # [B, N, 1, d]
    base_lo, base_hi = (
        bases[..., :dims].unsqueeze(1),
        bases[..., dims:].unsqueeze(1),
    )  # [B, 1, K, d]
    crop_extent = (crop_hi - crop_lo).squeeze(2)
    if bool((crop_extent <= 0).any()):
        raise ValueError(
            "every crop box needs hi > lo on every axis (a crop of zero volume has no label)"
        )
    if bool((bases[..., dims:] < bases[..., :dims]).any()):
        raise ValueError("every base box needs hi >= lo on every axis")
    side = (torch.minimum(crop_hi, base_hi) - torch.maximum(crop_lo, base_lo)).clamp(min=0)
    return side.prod(dim=-1) / crop_extent.prod(dim=-1).unsqueeze(-1)


def position_logits(crop_embeddings: Tensor, base_embeddings: Tensor) -> Tensor:
    """Predicted position ``p = max(0, cos(crop, base))``: ``[B,N,D] x [B,K,D] -> [B,N,K]``."""
    if crop_embeddings.ndim != 3 or base_embeddings.ndim != 3:
        raise ValueError(
            f"embeddings must be [B, N, D] and [B, K, D], got {tuple(crop_embeddings.shape)} "
            f"and {tuple(base_embeddings.shape)}"
        )
    if (
        crop_embeddings.shape[0] != base_embeddings.shape[0]
        or crop_embeddings.shape[2] != base_embeddings.shape[2]
    ):
        raise ValueError(
            f"crop and base embeddings need one batch size and one width, got "
            f"{tuple(crop_embeddings.shape)} and {tuple(base_embeddings.shape)}"
        )
    c = F.normalize(crop_embeddings.float(), dim=-1)
    b = F.normalize(base_embeddings.float(), dim=-1)
    # clamp, not only relu: rounding can push a cosine a hair above 1
    return (c @ b.transpose(1, 2)).clamp(min=0.0, max=1.0)


def position_loss(predictions: Tensor, labels: Tensor) -> Tensor:
    """VoCo position loss (module doc), per volume, averaged over volumes.

    Args:
        predictions: ``[B, N, K]`` in [0, 1] (from :func:`position_logits`).
        labels: ``[B, N, K]`` in [0, 1] (overlap fractions, or a teacher's detached predictions).

    Returns:
        Scalar; ~0 when ``predictions == labels``.
    """
    if predictions.ndim != 3 or predictions.shape != labels.shape:
        raise ValueError(
            f"predictions and labels must both be [B, N, K], got {tuple(predictions.shape)} "
            f"and {tuple(labels.shape)}"
        )
    labels = labels.to(predictions.dtype)
    if bool(((labels < 0) | (labels > 1)).any()):
        raise ValueError("position labels must lie in [0, 1]")
    distance = (labels - predictions).abs()
    per_entry = -torch.log(1 - distance + _EPS)
    positive = (labels * per_entry).sum(dim=(1, 2)) / labels.sum(dim=(1, 2)).clamp(min=_EPS)
    untouched = (labels == 0).to(predictions.dtype)
    negative = (untouched * per_entry).sum(dim=(1, 2)) / untouched.sum(dim=(1, 2)).clamp(min=1)
    return (positive + negative).mean()


def base_regularization(base_embeddings: Tensor) -> Tensor:
    """Mean over volumes and ordered pairs ``i != j`` of ``max(0, cos(b_i, b_j))^2``.

    Args:
        base_embeddings: ``[B, K, D]`` with ``K >= 2``.

    Returns:
        Scalar; 0 for mutually orthogonal bases.
    """
    if base_embeddings.ndim != 3 or base_embeddings.shape[1] < 2:
        raise ValueError(
            f"base embeddings must be [B, K >= 2, D], got {tuple(base_embeddings.shape)}"
        )
    b = F.normalize(base_embeddings.float(), dim=-1)
    k = b.shape[1]
    cosine = b @ b.transpose(1, 2)
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=b.device)
    return torch.relu(cosine[:, off_diagonal]).pow(2).mean()


def inter_volume_loss(
    crop_embeddings: Tensor,
    base_embeddings: Tensor,
    teacher_crop_embeddings: Tensor,
    teacher_base_embeddings: Tensor,
) -> Tensor:
    """Student-vs-teacher agreement on crops of volume b scored against bases of volume b+1.

    Args:
        crop_embeddings, teacher_crop_embeddings: ``[B, N, D]``.
        base_embeddings, teacher_base_embeddings: ``[B, K, D]``.

    Returns:
        Scalar :func:`position_loss` of the student's predictions against the teacher's
        detached ones; 0 (with a graph) when ``B < 2``, as there is no other volume. Pairs are
        formed within the local batch.
    """
    if crop_embeddings.shape[0] < 2:
        return crop_embeddings.sum() * 0.0
    other_bases = torch.roll(base_embeddings, shifts=-1, dims=0)
    other_teacher_bases = torch.roll(teacher_base_embeddings, shifts=-1, dims=0)
    student = position_logits(crop_embeddings, other_bases)
    with torch.no_grad():
        teacher = position_logits(teacher_crop_embeddings, other_teacher_bases)
    return position_loss(student, teacher)


def voco_loss(
    crop_embeddings: Tensor,
    base_embeddings: Tensor,
    labels: Tensor,
    *,
    teacher_crop_embeddings: Tensor | None = None,
    teacher_base_embeddings: Tensor | None = None,
    position_weight: float = 1.0,
    regularization_weight: float = 1.0,
    inter_volume_weight: float = 1.0,
) -> dict[str, Tensor]:
    """All VoCo terms and their weighted total.

    Args:
        crop_embeddings: ``[B, N, D]`` student embeddings of the random crops.
        base_embeddings: ``[B, K, D]`` student embeddings of the base crops.
        labels: ``[B, N, K]`` from :func:`overlap_labels`.
        teacher_crop_embeddings: ``[B, N, D]`` EMA-teacher embeddings of the random crops, or None.
        teacher_base_embeddings: ``[B, K, D]`` EMA-teacher embeddings of the base crops, or None.
        position_weight, regularization_weight, inter_volume_weight: weights of the terms
            (the inter-volume term needs both teacher tensors and is 0 otherwise).

    Returns:
        ``{"position", "regularization", "inter_volume", "total"}``, scalars.
    """
    shapes_ok = (
        crop_embeddings.ndim == 3
        and base_embeddings.ndim == 3
        and labels.shape == (*crop_embeddings.shape[:2], base_embeddings.shape[1])
    )
    if not shapes_ok:
        raise ValueError(
            f"expected crops [B, N, D], bases [B, K, D], labels [B, N, K]; got "
            f"{tuple(crop_embeddings.shape)}, {tuple(base_embeddings.shape)}, {tuple(labels.shape)}"
        )
    for name, teacher, student in (
        ("teacher_crop_embeddings", teacher_crop_embeddings, crop_embeddings),
        ("teacher_base_embeddings", teacher_base_embeddings, base_embeddings),
    ):
        if teacher is not None and teacher.shape != student.shape:
            raise ValueError(
                f"{name} must match the student's shape {tuple(student.shape)}, "
                f"got {tuple(teacher.shape)}"
            )
    for name, weight in (
        ("position_weight", position_weight),
        ("regularization_weight", regularization_weight),
        ("inter_volume_weight", inter_volume_weight),
    ):
        if weight < 0:
            raise ValueError(f"{name} must be >= 0, got {weight}")

    position = position_loss(position_logits(crop_embeddings, base_embeddings), labels)
    regularization = base_regularization(base_embeddings)
    if teacher_crop_embeddings is not None and teacher_base_embeddings is not None:
        inter = inter_volume_loss(
            crop_embeddings, base_embeddings, teacher_crop_embeddings, teacher_base_embeddings
        )
    else:
        inter = position.new_zeros(())
    total = (
        position_weight * position
        + regularization_weight * regularization
        + inter_volume_weight * inter
    )
    return {
        "position": position,
        "regularization": regularization,
        "inter_volume": inter,
        "total": total,
    }
