"""Guideline-enhanced contrastive loss: pull image embeddings to their class's guideline text.

Paper: Li et al. 2025, "RAD: Towards Trustworthy Retrieval-Augmented Multi-modal Clinical
Diagnosis" (guideline-enhanced contrastive loss); the multi-positive form follows Khosla et
al. 2020, "Supervised Contrastive Learning" (mean log-likelihood over the positives).

Choice made here: one prototype per class. Each class's sentence embeddings are
L2-normalised, averaged and re-normalised (:func:`class_prototypes`), and every image is a
softmax classification among the C prototypes. A class with many sentences therefore weighs
as much as a class with two (per-sentence InfoNCE would let sentence counts tilt the
softmax), and the logits are exactly the zero-shot logits used at inference.

For image ``i`` with logits ``l_ic = cos(z_i, p_c) / T`` and target weights ``w_ic >= 0``
(one-hot for single-label, multi-hot for multi-label, or soft)::

    loss_i = - sum_c (w_ic / sum_c' w_ic') * log softmax(l_i)_c

averaged over images with at least one positive (an image with no positive class, e.g. a
multi-label "no finding" without its own class, has nothing to be pulled to and is skipped;
a batch without any positive gives 0 with a gradient path).

Shapes: ``z [B, D]`` image embeddings after a trainable projection; ``g [N, D]`` guideline
sentence embeddings in the same space; ``sentence_class [N]`` class index of each sentence;
``targets [B]`` (int class index) or ``[B, C]`` (weights).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_temperature(temperature: float) -> None:
    if not (
        isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def class_prototypes(g: Tensor, sentence_class: Tensor, num_classes: int | None = None) -> Tensor:
    """Unit class prototypes ``[C, D]``: re-normalised mean of each class's unit sentence vectors.

    Args:
        g: sentence embeddings ``[N, D]`` (any norm).
        sentence_class: ``[N]`` integer class index of each sentence.
        num_classes: C; default ``max(sentence_class) + 1``. Every class needs a sentence.
    """
    if g.ndim != 2 or g.shape[0] < 1:
        raise ValueError(f"guideline embeddings must be [N, D] with N >= 1, got {tuple(g.shape)}")
    if sentence_class.ndim != 1 or sentence_class.shape[0] != g.shape[0]:
        raise ValueError(
            f"sentence_class must be [N] with N = {g.shape[0]}, got {tuple(sentence_class.shape)}"
        )
    if sentence_class.dtype.is_floating_point or sentence_class.dtype == torch.bool:
        raise ValueError(f"sentence_class must hold integer indices, got {sentence_class.dtype}")
    if int(sentence_class.min()) < 0:
        raise ValueError(f"sentence_class has a negative index {int(sentence_class.min())}")
    c = int(sentence_class.max()) + 1 if num_classes is None else num_classes
    if int(sentence_class.max()) >= c:
        raise ValueError(f"sentence_class index {int(sentence_class.max())} >= num_classes {c}")
    counts = torch.bincount(sentence_class, minlength=c)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes {missing} have no guideline sentence")
    unit = F.normalize(g.float(), dim=-1)
    sums = torch.zeros(c, g.shape[1], dtype=unit.dtype, device=g.device)
    sums = sums.index_add(0, sentence_class.to(g.device), unit)
    return F.normalize(sums, dim=-1)


def zero_shot_logits(z: Tensor, prototypes: Tensor, temperature: float = 1.0) -> Tensor:
    """Cosine of each image to each class prototype over T: ``[B, D] x [C, D] -> [B, C]``."""
    _check_temperature(temperature)
    if z.ndim != 2 or prototypes.ndim != 2 or z.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"z must be [B, D] and prototypes [C, D] with one D, got {tuple(z.shape)} and "
            f"{tuple(prototypes.shape)}"
        )
    with torch.autocast(device_type=z.device.type, enabled=False):
        return F.normalize(z.float(), dim=-1) @ F.normalize(prototypes.float(), dim=-1).T / (
            temperature
        )


def target_weights(targets: Tensor, batch: int, num_classes: int) -> Tensor:
    """``[B]`` class indices or ``[B, C]`` weights -> float weights ``[B, C]`` (validated)."""
    if targets.ndim == 1:
        if targets.shape[0] != batch or targets.dtype.is_floating_point:
            raise ValueError(
                f"class-index targets must be integer [B] with B = {batch}, got "
                f"{tuple(targets.shape)} {targets.dtype}"
            )
        if batch and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
            raise ValueError(
                f"targets must lie in [0, {num_classes}), got {targets.min()}..{targets.max()}"
            )
        return F.one_hot(targets.long(), num_classes).float()
    if targets.ndim != 2 or tuple(targets.shape) != (batch, num_classes):
        raise ValueError(
            f"targets must be [B] indices or [B, C] = [{batch}, {num_classes}] weights, got "
            f"{tuple(targets.shape)}"
        )
    weights = targets.float()
    if bool((weights < 0).any()) or not bool(torch.isfinite(weights).all()):
        raise ValueError("multi-label targets must be finite and >= 0")
    return weights


def guideline_contrastive_loss(
    z: Tensor,
    g: Tensor,
    sentence_class: Tensor,
    targets: Tensor,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> Tensor:
    """Guideline-enhanced contrastive loss (module docstring), a scalar.

    Args:
        z: image embeddings ``[B, D]`` (normalised inside; scale does not matter).
        g: guideline sentence embeddings ``[N, D]``.
        sentence_class: ``[N]`` class index of each sentence.
        targets: ``[B]`` class indices, or ``[B, C]`` non-negative weights (multi-label).
        temperature: softmax temperature T > 0.
        num_classes: C; default ``max(sentence_class) + 1``.
    """
    if z.ndim != 2 or z.shape[0] < 1:
        raise ValueError(f"image embeddings z must be [B, D] with B >= 1, got {tuple(z.shape)}")
    if g.ndim != 2 or g.shape[1] != z.shape[1]:
        raise ValueError(
            f"guideline embeddings must be [N, D] with D = {z.shape[1]} (as z), got "
            f"{tuple(g.shape)}"
        )
    prototypes = class_prototypes(g, sentence_class, num_classes)
    logits = zero_shot_logits(z, prototypes, temperature)
    weights = target_weights(targets.to(z.device), z.shape[0], prototypes.shape[0])
    total = weights.sum(dim=1, keepdim=True)
    has_positive = total.squeeze(1) > 0
    if not bool(has_positive.any()):
        return logits.sum() * 0.0
    log_prob = F.log_softmax(logits, dim=1)
    per_image = -(weights / total.clamp_min(1e-12) * log_prob).sum(dim=1)
    return per_image[has_positive].mean()
