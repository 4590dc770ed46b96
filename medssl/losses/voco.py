"""VoCo: volume contrast with geometric context priors: its two published forms, and ours.

Papers:
    Wu, Zhuang, Chen, "VoCo: A Simple-yet-Effective Volume Contrastive Learning Framework for
    3D Medical Image Analysis", CVPR 2024 (arXiv:2402.17300), code: Luffy03/VoCo
    ``models/voco_head.py``;
    Wu, Zhuang, Chen, "Large-Scale 3D Medical Image Pre-training with Geometric Context
    Priors", arXiv:2410.09890, code: Luffy03/Large-Scale-Medical
    ``Self-supervised/models/voco_head.py`` (the extended form).

A region of a volume is cut into a grid of K base crops; N random crops are drawn from the
same region. A crop's position label ``y_k`` is the fraction of its volume inside base k
(:func:`overlap_labels`). The prediction is ``p_k = max(0, cos(c, b_k))``
(:func:`position_logits`). ``s``: student, ``t``: EMA teacher (always detached).

Position loss (:func:`position_loss`), per volume, averaged over volumes::

    L_pos = sum_{n,k} y_k * -log(1 - |y_k - p_k| + eps) / sum_{n,k} y_k      (overlapping bases)
          + mean_{(n,k): y_k = 0} neg(p_k)                                   (bases not touched)

with ``neg(p) = p^2`` in the CVPR code and ``neg(p) = -log(1 - p + eps)`` in the extended
code (``negatives="square"`` / ``"log"``).

Forms (:func:`voco_loss`):

* ``cvpr``: ``p = (pos(c_s, b_t) + pos(c_t, b_s)) / 2``, the two student-teacher pairings
  averaged; ``L = L_pos[p^2 negatives] + L_reg``.
* ``extended``: intra-volume ``p = pos(c_s, b_t)``; inter-volume (:func:`inter_volume_loss`)
  the student's ``pos(c_s, b_s')`` against the teacher's ``pos(c_t, b_t')`` on the bases of
  volume ``b' = b + 1 mod B``; ``L = L_pos[log] + L_inter + L_reg``.
* ``student-bases`` (medssl's earlier form, no teacher): ``p = pos(c_s, b_s)``;
  ``L = L_pos[log] + L_reg``. It learned faster than both published forms in the short
  phantom runs of ``tests/methods/test_voco_learns.py``.

Base regulariser (:func:`base_regularization`): mean over pairs ``i < j`` of
``max(0, cos(b_i, sg(b_j)))^2`` on the student bases, the second of each pair detached as in
both reference codes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-6
Form = Literal["cvpr", "extended", "student-bases"]
Negatives = Literal["square", "log"]


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


def position_loss(predictions: Tensor, labels: Tensor, negatives: Negatives = "log") -> Tensor:
    """VoCo position loss (module doc), per volume, averaged over volumes.

    Args:
        predictions: ``[B, N, K]`` in [0, 1] (from :func:`position_logits`).
        labels: ``[B, N, K]`` in [0, 1] (overlap fractions, or a teacher's detached predictions).
        negatives: the cost of a prediction on a base the crop does not touch: ``"square"``
            ``p^2`` (CVPR code) or ``"log"`` ``-log(1 - p)`` (extended code).

    Returns:
        Scalar; ~0 when ``predictions == labels``.
    """
    if predictions.ndim != 3 or predictions.shape != labels.shape:
        raise ValueError(
            f"predictions and labels must both be [B, N, K], got {tuple(predictions.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if negatives not in ("square", "log"):
        raise ValueError(f"negatives {negatives!r}: expected 'square' or 'log'")
    labels = labels.to(predictions.dtype)
    if bool(((labels < 0) | (labels > 1)).any()):
        raise ValueError("position labels must lie in [0, 1]")
    distance = (labels - predictions).abs()
    per_entry = -torch.log(1 - distance + _EPS)
    positive = (labels * per_entry).sum(dim=(1, 2)) / labels.sum(dim=(1, 2)).clamp(min=_EPS)
    untouched = (labels == 0).to(predictions.dtype)
    cost = predictions.pow(2) if negatives == "square" else -torch.log(1 - predictions + _EPS)
    negative = (untouched * cost).sum(dim=(1, 2)) / untouched.sum(dim=(1, 2)).clamp(min=1)
    return (positive + negative).mean()


def base_regularization(base_embeddings: Tensor) -> Tensor:
    """Mean over volumes and pairs ``i < j`` of ``max(0, cos(b_i, sg(b_j)))^2``.

    The second base of each pair is detached, as in both reference codes: base ``i`` is
    pushed away from the later bases, the last base gets no gradient from this term.

    Args:
        base_embeddings: ``[B, K, D]`` with ``K >= 2``.

    Returns:
        Scalar; 0 for mutually orthogonal bases, 1 for identical ones.
    """
    if base_embeddings.ndim != 3 or base_embeddings.shape[1] < 2:
        raise ValueError(
            f"base embeddings must be [B, K >= 2, D], got {tuple(base_embeddings.shape)}"
        )
    b = F.normalize(base_embeddings.float(), dim=-1)
    k = b.shape[1]
    cosine = b @ b.detach().transpose(1, 2)  # [B, K, K]: row i live, column j detached
    upper = torch.ones(k, k, dtype=torch.bool, device=b.device).triu(diagonal=1)
    return torch.relu(cosine[:, upper]).pow(2).mean()


def inter_volume_loss(
    crop_embeddings: Tensor,
    base_embeddings: Tensor,
    teacher_crop_embeddings: Tensor,
    teacher_base_embeddings: Tensor,
) -> Tensor:
    """Extended form: crops of volume b scored against the bases of volume ``b + 1 mod B``,
    the student's prediction against the teacher's (detached) one, log negatives.

    Args:
        crop_embeddings, teacher_crop_embeddings: ``[B, N, D]``.
        base_embeddings, teacher_base_embeddings: ``[B, K, D]``.

    Returns:
        Scalar :func:`position_loss`. With ``B = 1`` the "other" volume is the volume itself,
        as in the reference code. Pairs are formed within the local batch.
    """
    other_bases = torch.roll(base_embeddings, shifts=-1, dims=0)
    other_teacher_bases = torch.roll(teacher_base_embeddings, shifts=-1, dims=0)
    student = position_logits(crop_embeddings, other_bases)
    with torch.no_grad():
        teacher = position_logits(teacher_crop_embeddings, other_teacher_bases)
    return position_loss(student, teacher, negatives="log")


def voco_loss(
    crop_embeddings: Tensor,
    base_embeddings: Tensor,
    labels: Tensor,
    *,
    teacher_crop_embeddings: Tensor | None = None,
    teacher_base_embeddings: Tensor | None = None,
    form: Form = "cvpr",
    position_weight: float = 1.0,
    regularization_weight: float = 1.0,
    inter_volume_weight: float = 1.0,
) -> dict[str, Tensor]:
    """All VoCo terms of one form (module doc) and their weighted total.

    Args:
        crop_embeddings: ``[B, N, D]`` student embeddings of the random crops.
        base_embeddings: ``[B, K, D]`` student embeddings of the base crops.
        labels: ``[B, N, K]`` from :func:`overlap_labels`.
        teacher_crop_embeddings: ``[B, N, D]`` EMA-teacher embeddings of the random crops
            (required by ``cvpr`` and ``extended``; ``student-bases`` has no teacher).
        teacher_base_embeddings: ``[B, K, D]`` EMA-teacher embeddings of the base crops.
        form: ``"cvpr"``, ``"extended"`` or ``"student-bases"`` (module doc).
        position_weight, regularization_weight, inter_volume_weight: weights of the terms
            (the inter-volume term is 0 in the CVPR form).

    Returns:
        ``{"position", "regularization", "inter_volume", "total"}``, scalars; no gradient
        reaches the teacher tensors.
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
    if form not in ("cvpr", "extended", "student-bases"):
        raise ValueError(f"VoCo form {form!r}: expected 'cvpr', 'extended' or 'student-bases'")
    for name, teacher, student in (
        ("teacher_crop_embeddings", teacher_crop_embeddings, crop_embeddings),
        ("teacher_base_embeddings", teacher_base_embeddings, base_embeddings),
    ):
        if teacher is None and form != "student-bases":
            raise ValueError(f"the {form} form needs {name}")
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
    teacher_crops, teacher_bases = (
        None if t is None else t.detach()
        for t in (teacher_crop_embeddings, teacher_base_embeddings)
    )

    if form == "cvpr":
        predictions = 0.5 * (
            position_logits(crop_embeddings, teacher_bases)
            + position_logits(teacher_crops, base_embeddings)
        )
        position = position_loss(predictions, labels, negatives="square")
        inter = position.new_zeros(())
    elif form == "student-bases":
        predictions = position_logits(crop_embeddings, base_embeddings)
        position = position_loss(predictions, labels, negatives="log")
        inter = position.new_zeros(())
    else:
        predictions = position_logits(crop_embeddings, teacher_bases)
        position = position_loss(predictions, labels, negatives="log")
        inter = inter_volume_loss(crop_embeddings, base_embeddings, teacher_crops, teacher_bases)
    regularization = base_regularization(base_embeddings)
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
