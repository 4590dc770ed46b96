"""Guideline-enhanced contrastive losses: pull image embeddings to their classes' guideline text.

Paper: Li et al. 2025, "RAD: Towards Trustworthy Retrieval-Augmented Multi-modal Clinical
Diagnosis" (NeurIPS 2025, arXiv:2509.19980), guideline-enhanced contrastive loss.

Both forms compare an image embedding with one unit prototype per class: each class's
sentence embeddings are L2-normalised, averaged and re-normalised (:func:`class_prototypes`;
the reference has one guideline text per class, so its prototype is that text). With
``s_ic = cos(z_i, p_c) / T`` and target weights ``w_ic >= 0`` (one-hot for single-label,
multi-hot for multi-label, or soft), positives ``P_i = {c : w_ic > 0}``:

* :func:`guideline_bce_loss` ("rad", the reference form): the positives plus
  ``min(k |P_i|, C - |P_i|)`` negatives drawn uniformly without replacement from the other
  classes (``k = negatives_per_positive``, 5 in the reference), each scored by binary
  cross-entropy with target ``w_ic / sum_c' w_ic'`` (``1 / |P_i|`` for multi-hot, as the
  reference) for a positive and 0 for a negative::

      loss_i = mean over c in P_i + N_i of BCE(s_ic, t_ic)

  The reference's vision term uses T = 2.0 and weight 0.1 (``main_rad.py`` defaults).
* :func:`prototype_softmax_loss` ("prototype", medssl's earlier form): a softmax over all C
  prototypes, supervised-contrastive style (Khosla et al. 2020)::

      loss_i = - sum_c (w_ic / sum_c' w_ic') * log softmax(s_i)_c

Both average over images with at least one positive (an image without a positive class has
nothing to be pulled to and is skipped; a batch without any positive gives 0 with a gradient
path).

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


def prototype_logits(z: Tensor, prototypes: Tensor, temperature: float = 1.0) -> Tensor:
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


def _logits_and_weights(
    z: Tensor, g: Tensor, sentence_class: Tensor, targets: Tensor, temperature: float,
    num_classes: int | None,
) -> tuple[Tensor, Tensor]:
    """Validated ``s [B, C]`` (cosine to prototypes over T) and target weights ``w [B, C]``."""
    if z.ndim != 2 or z.shape[0] < 1:
        raise ValueError(f"image embeddings z must be [B, D] with B >= 1, got {tuple(z.shape)}")
    if g.ndim != 2 or g.shape[1] != z.shape[1]:
        raise ValueError(
            f"guideline embeddings must be [N, D] with D = {z.shape[1]} (as z), got "
            f"{tuple(g.shape)}"
        )
    prototypes = class_prototypes(g, sentence_class, num_classes)
    logits = prototype_logits(z, prototypes, temperature)
    return logits, target_weights(targets.to(z.device), z.shape[0], prototypes.shape[0])


def sample_negatives(
    positive: Tensor, per_positive: int, generator: torch.Generator | None = None
) -> Tensor:
    """``[B, C]`` bool: per row ``min(per_positive * |P|, C - |P|)`` non-positive classes drawn
    uniformly without replacement (random keys, the k smallest win)."""
    if not isinstance(per_positive, int) or per_positive < 1:
        raise ValueError(f"negatives_per_positive must be an int >= 1, got {per_positive!r}")
    # drawn on the CPU so a CPU generator serves any device
    keys = torch.rand(positive.shape, generator=generator).to(positive.device)
    keys = keys.masked_fill(positive, math.inf)
    rank = keys.argsort(dim=1).argsort(dim=1)
    count = positive.sum(dim=1, keepdim=True)
    wanted = torch.minimum(per_positive * count, positive.shape[1] - count)
    return (rank < wanted) & ~positive


def guideline_bce_loss(
    z: Tensor,
    g: Tensor,
    sentence_class: Tensor,
    targets: Tensor,
    temperature: float = 2.0,
    negatives_per_positive: int = 5,
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """RAD's guideline-enhanced contrastive loss (module docstring), a scalar.

    Args:
        z: image embeddings ``[B, D]`` (normalised inside; scale does not matter).
        g: guideline sentence embeddings ``[N, D]``.
        sentence_class: ``[N]`` class index of each sentence.
        targets: ``[B]`` class indices, or ``[B, C]`` non-negative weights (multi-label).
        temperature: T > 0 (the reference's vision term: 2.0).
        negatives_per_positive: k, negatives drawn per positive class (reference: 5).
        num_classes: C; default ``max(sentence_class) + 1``.
        generator: for the negative draw (default: the global RNG).
    """
    logits, weights = _logits_and_weights(z, g, sentence_class, targets, temperature, num_classes)
    positive = weights > 0
    has_positive = positive.any(dim=1)
    if not bool(has_positive.any()):
        return logits.sum() * 0.0
    negative = sample_negatives(positive, negatives_per_positive, generator)
    scored = (positive | negative).float()
    target = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    per_image = (bce * scored).sum(dim=1) / scored.sum(dim=1).clamp_min(1.0)
    return per_image[has_positive].mean()


def prototype_softmax_loss(
    z: Tensor,
    g: Tensor,
    sentence_class: Tensor,
    targets: Tensor,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> Tensor:
    """Softmax over the class prototypes (module docstring), a scalar.

    Args:
        z: image embeddings ``[B, D]`` (normalised inside; scale does not matter).
        g: guideline sentence embeddings ``[N, D]``.
        sentence_class: ``[N]`` class index of each sentence.
        targets: ``[B]`` class indices, or ``[B, C]`` non-negative weights (multi-label).
        temperature: softmax temperature T > 0.
        num_classes: C; default ``max(sentence_class) + 1``.
    """
    logits, weights = _logits_and_weights(z, g, sentence_class, targets, temperature, num_classes)
    total = weights.sum(dim=1, keepdim=True)
    has_positive = total.squeeze(1) > 0
    if not bool(has_positive.any()):
        return logits.sum() * 0.0
    log_prob = F.log_softmax(logits, dim=1)
    per_image = -(weights / total.clamp_min(1e-12) * log_prob).sum(dim=1)
    return per_image[has_positive].mean()
