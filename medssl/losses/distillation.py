"""Teacher-student self-distillation: DINO on global embeddings, iBOT on masked patch tokens.

Papers:
    Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers" (DINO):
    the student's softmax at ``student_temperature`` is trained towards the EMA teacher's
    *centred* and *sharpened* softmax ``softmax((t - c) / teacher_temperature)``; the center
    ``c`` is an EMA of the teacher's batch-mean logits (Eq. 4), which with sharpening keeps
    the teacher from collapsing to one dimension or to the uniform distribution.
    Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer": the same
    cross-entropy on patch tokens, where the student sees a masked image and the teacher the
    unmasked one, counted only at masked patches (with its own center).

Shapes: logits ``[B, K]`` (one tensor per crop), patch logits ``[B, P, K]``, masks ``[B, P]``
(True = masked for the student), center ``[K]``.

Schedules (DINO's): the teacher temperature warmed up linearly
(:func:`warmup_teacher_temperature`) and the teacher's EMA momentum raised to 1 on a cosine
(:func:`teacher_momentum`), both pure functions of the optimiser step.

Distributed: the batch mean for the center update is all-reduced (sum and count), so every
rank holds the same center, equal to the single-process center on the global batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.losses.distributed import all_reduce_sum


def _check_temperature(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def teacher_probabilities(teacher_logits: Tensor, center: Tensor, temperature: float) -> Tensor:
    """Centred, sharpened teacher targets ``softmax((t - c) / T_t)``, detached; ``[..., K]``."""
    _check_temperature("teacher_temperature", temperature)
    if center.shape != teacher_logits.shape[-1:]:
        raise ValueError(
            f"center must be [K] = [{teacher_logits.shape[-1]}], got {tuple(center.shape)}"
        )
    return F.softmax((teacher_logits.detach().float() - center.float()) / temperature, dim=-1)


def distillation_cross_entropy(
    student_logits: Tensor, teacher_probs: Tensor, temperature: float
) -> Tensor:
    """Per-row ``-sum_k p_k log softmax(s / T_s)_k``; ``[..., K]`` each, returns ``[...]``."""
    _check_temperature("student_temperature", temperature)
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(
            f"student logits and teacher targets must share a shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_probs.shape)}"
        )
    return -(teacher_probs * F.log_softmax(student_logits.float() / temperature, dim=-1)).sum(
        dim=-1
    )


def dino_loss(
    student_logits: Sequence[Tensor],
    teacher_logits: Sequence[Tensor],
    center: Tensor,
    *,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
) -> Tensor:
    """DINO multi-crop loss.

    Args:
        student_logits: ``[B, K]`` per student crop; the first ``len(teacher_logits)`` are the
            same global crops the teacher saw, in the same order.
        teacher_logits: ``[B, K]`` per teacher (global) crop.
        center: ``[K]`` current center.
        student_temperature, teacher_temperature: ``> 0`` (teacher lower: sharpening).

    Returns:
        Scalar: mean over pairs (teacher crop i, student crop v != i) of the batch-mean
        cross-entropy.
    """
    if not teacher_logits or len(student_logits) < 2 or len(student_logits) < len(teacher_logits):
        raise ValueError(
            f"DINO needs >= 1 teacher crop and >= 2 student crops, at least as many as the "
            f"teacher's; got {len(teacher_logits)} and {len(student_logits)}"
        )
    shape = teacher_logits[0].shape
    if len(shape) != 2 or any(t.shape != shape for t in (*teacher_logits, *student_logits)):
        raise ValueError("every crop's logits must be one [B, K] shape")
    targets = [teacher_probabilities(t, center, teacher_temperature) for t in teacher_logits]
    terms = [
        distillation_cross_entropy(s, p, student_temperature).mean()
        for i, p in enumerate(targets)
        for v, s in enumerate(student_logits)
        if v != i
    ]
    return torch.stack(terms).mean()


def ibot_patch_loss(
    student_patch_logits: Tensor,
    teacher_patch_logits: Tensor,
    masks: Tensor,
    center: Tensor,
    *,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
) -> Tensor:
    """iBOT masked-patch distillation.

    Args:
        student_patch_logits: ``[B, P, K]`` from the masked input.
        teacher_patch_logits: ``[B, P, K]`` from the unmasked input.
        masks: ``[B, P]`` bool, True where the student's patch was masked.
        center: ``[K]`` patch center.

    Returns:
        Scalar: per image, the mean cross-entropy over its masked patches (0 for an image with
        none), averaged over images, as in iBOT.
    """
    if student_patch_logits.ndim != 3 or teacher_patch_logits.shape != student_patch_logits.shape:
        raise ValueError(
            f"patch logits must both be [B, P, K], got {tuple(student_patch_logits.shape)} "
            f"and {tuple(teacher_patch_logits.shape)}"
        )
    if masks.shape != student_patch_logits.shape[:2] or masks.dtype != torch.bool:
        raise ValueError(
            f"masks must be bool [B, P] = {tuple(student_patch_logits.shape[:2])}, "
            f"got {masks.dtype} {tuple(masks.shape)}"
        )
    targets = teacher_probabilities(teacher_patch_logits, center, teacher_temperature)
    per_patch = distillation_cross_entropy(student_patch_logits, targets, student_temperature)
    weight = masks.to(per_patch.dtype)
    per_image = (per_patch * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)
    return per_image.mean()


def warmup_teacher_temperature(
    step: int, warmup_temperature: float, temperature: float, warmup_steps: int
) -> float:
    """DINO's teacher temperature at ``step``: linear from ``warmup_temperature`` to ``temperature``
    over ``warmup_steps`` steps, then constant (a cooler teacher early keeps it from collapsing)."""
    _check_temperature("warmup_teacher_temperature", warmup_temperature)
    _check_temperature("teacher_temperature", temperature)
    if warmup_steps < 0 or step < 0:
        raise ValueError(f"warmup_steps and step must be >= 0, got {warmup_steps} and {step}")
    if step >= warmup_steps:
        return temperature
    return warmup_temperature + (temperature - warmup_temperature) * step / warmup_steps


def teacher_momentum(step: int, total_steps: float, base: float) -> float:
    """DINO's EMA momentum at ``step``: ``1 - (1 - base) (1 + cos(pi step / total)) / 2``, from
    ``base`` at step 0 to 1 at ``total_steps`` (then 1); ``base`` without a finite total."""
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"EMA momentum must lie in [0, 1], got {base}")
    if not (math.isfinite(total_steps) and total_steps > 0):
        return base
    progress = min(max(step, 0), total_steps) / total_steps
    return 1.0 - (1.0 - base) * (1.0 + math.cos(math.pi * progress)) / 2.0


@torch.no_grad()
def updated_center(
    center: Tensor, teacher_logits: Tensor | Sequence[Tensor], momentum: float = 0.9
) -> Tensor:
    """``momentum * center + (1 - momentum) * mean`` of the teacher logits over the global batch.

    Args:
        center: ``[K]``.
        teacher_logits: ``[..., K]`` (e.g. ``[B, K]`` or patch logits ``[B, P, K]``) or a
            sequence of ``[B, K]`` crops; every row counts once.
        momentum: in [0, 1].

    Returns:
        The new center ``[K]`` (the argument is not modified).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
    logits = (
        teacher_logits if isinstance(teacher_logits, Tensor) else torch.cat(list(teacher_logits))
    )
    if logits.shape[-1:] != center.shape:
        raise ValueError(f"teacher logits end in K = {center.shape}, got {tuple(logits.shape)}")
    rows = logits.detach().float().reshape(-1, logits.shape[-1])
    # one collective for sum and count: ranks may hold different numbers of rows
    totals = all_reduce_sum(torch.cat([rows.sum(dim=0), rows.new_tensor([rows.shape[0]])]))
    batch_mean = totals[:-1] / totals[-1].clamp(min=1.0)
    return (momentum * center.float() + (1.0 - momentum) * batch_mean).to(center.dtype)


class DINOLoss(nn.Module):
    """DINO loss holding its center (a buffer, so it is checkpointed and moves with the module).

    ``forward(student_logits, teacher_logits)`` returns the loss against the current center,
    then moves the center towards this batch's teacher mean (DINO updates it after the loss).
    """

    def __init__(
        self,
        out_dim: int,
        *,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim must be >= 1, got {out_dim}")
        _check_temperature("student_temperature", student_temperature)
        _check_temperature("teacher_temperature", teacher_temperature)
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must lie in [0, 1], got {center_momentum}")
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(out_dim))

    def forward(
        self,
        student_logits: Sequence[Tensor],
        teacher_logits: Sequence[Tensor],
        teacher_temperature: float | None = None,
    ) -> Tensor:
        """Loss for this batch; ``teacher_temperature`` overrides the default (for warm-up)."""
        loss = dino_loss(
            student_logits,
            teacher_logits,
            self.center,
            student_temperature=self.student_temperature,
            teacher_temperature=(
                self.teacher_temperature if teacher_temperature is None else teacher_temperature
            ),
        )
        self.center.copy_(updated_center(self.center, teacher_logits, self.center_momentum))
        return loss
