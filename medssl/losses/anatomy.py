"""Anatomy-aware positive mining and the loss terms built on mined pairs.

Papers: Jiang et al. 2023, "Anatomical Invariance Modeling and Semantic Alignment for
Self-supervised Learning in 3D Medical Image Analysis" (Alice: positives are the same
anatomy in different volumes, aligned by a conditional module); Azabou et al. 2021, "Mine
Your Own vieW: Self-Supervised Learning Through Across-Sample Prediction" (MYOW: positives
mined as nearest neighbours in the target network's embedding space).

Mining (:func:`mine_positives`), over a candidate pool of ``M`` crops (the global batch):
the prior is the distance between crop centres in normalised body coordinates ``[M, 3]``;
the teacher refines it with its nearest neighbour (cosine) among the crops of *other*
volumes that lie within ``search_radius`` of the anchor in body coordinates; a pair is kept
only when the teacher's pick also lies within ``tolerance`` of the anchor (prior and teacher
agree). Either part can be switched off for ablations (``use_prior`` / ``use_teacher``).

Shapes: anchors ``[N, D]`` (queries, e.g. this rank's crops), pool ``[M, D]``; returns
indices ``[N]`` into the pool and a keep mask ``[N]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from medssl.losses.distillation import distillation_cross_entropy, teacher_probabilities
from medssl.losses.distributed import all_reduce_sum, world_size


@torch.no_grad()
def mine_positives(
    anchor_embeddings: Tensor,
    anchor_body: Tensor,
    anchor_groups: Tensor,
    pool_embeddings: Tensor,
    pool_body: Tensor,
    pool_groups: Tensor,
    *,
    tolerance: float = 0.1,
    search_radius: float = 0.2,
    use_prior: bool = True,
    use_teacher: bool = True,
) -> tuple[Tensor, Tensor]:
    """Matched positives of every anchor in the pool, and which matches to keep.

    Args:
        anchor_embeddings: ``[N, D]`` teacher embeddings of the anchors.
        anchor_body: ``[N, 3]`` anchor crop centres in normalised body coordinates.
        anchor_groups: ``[N]`` int volume ids; a positive always comes from another volume.
        pool_embeddings, pool_body, pool_groups: ``[M, D]``, ``[M, 3]``, ``[M]`` candidates.
        tolerance: keep a match whose body-coordinate distance to the anchor is at most this.
        search_radius: the teacher searches among candidates this close (body coordinates).
        use_prior: False: teacher nearest neighbour over all other-volume crops, all kept.
        use_teacher: False: the body-coordinate nearest neighbour, kept within ``tolerance``.

    Returns:
        ``(index [N] int64 into the pool, keep [N] bool)``; an anchor without any candidate
        (no other volume in the pool) has ``keep`` False.
    """
    n, m = anchor_embeddings.shape[0], pool_embeddings.shape[0]
    if anchor_embeddings.ndim != 2 or pool_embeddings.shape[1:] != anchor_embeddings.shape[1:]:
        raise ValueError(
            f"embeddings must be [N, D] and [M, D], got {tuple(anchor_embeddings.shape)} "
            f"and {tuple(pool_embeddings.shape)}"
        )
    if anchor_body.shape != (n, 3) or pool_body.shape != (m, 3):
        raise ValueError(
            f"body coordinates must be [N, 3] = [{n}, 3] and [M, 3] = [{m}, 3], got "
            f"{tuple(anchor_body.shape)} and {tuple(pool_body.shape)}"
        )
    if anchor_groups.shape != (n,) or pool_groups.shape != (m,):
        raise ValueError(
            f"groups must be [N] and [M], got {tuple(anchor_groups.shape)} and {tuple(pool_groups.shape)}"
        )
    if not (use_prior or use_teacher):
        raise ValueError("mining needs the body prior, the teacher, or both; got neither")
    if not (tolerance > 0 and search_radius > 0):
        raise ValueError(
            f"tolerance and search_radius must be > 0, got {tolerance}, {search_radius}"
        )
    other = anchor_groups[:, None] != pool_groups[None, :]  # [N, M]
    distance = torch.cdist(anchor_body.float(), pool_body.float())  # [N, M]
    if use_teacher:
        similarity = (
            F.normalize(anchor_embeddings.float(), dim=1)
            @ F.normalize(pool_embeddings.float(), dim=1).T
        )
        allowed = other & (distance <= search_radius) if use_prior else other
        index = similarity.masked_fill(~allowed, -math.inf).argmax(dim=1)
        found = allowed.any(dim=1)
    else:
        index = distance.masked_fill(~other, math.inf).argmin(dim=1)
        found = other.any(dim=1)
    picked = distance.gather(1, index[:, None])[:, 0]
    keep = found & (picked <= tolerance) if use_prior else found
    return index, keep


def global_mean_scale(local_count: Tensor) -> Tensor:
    """``W * local / global`` count: turns a local mean into this rank's share of the global mean.

    A term averaged over a varying number of elements per rank (kept pairs, masked patches)
    is multiplied by this, so the mean over ranks (what DDP's gradient averaging optimises)
    equals one process's mean over the global batch. 0 where the global count is 0.
    """
    local = local_count.detach().float().reshape(1)
    total = all_reduce_sum(local.clone())
    return (world_size() * local / total.clamp(min=1.0))[0]


def matched_distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    keep: Tensor,
    center: Tensor,
    *,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
) -> Tensor:
    """DINO cross-entropy from each anchor's student logits to its matched positive's teacher.

    Args:
        student_logits: ``[N, K]`` of the anchors.
        teacher_logits: ``[N, K]`` of their matched positives (rows aligned with the anchors).
        keep: ``[N]`` bool, the pairs to count.
        center: ``[K]`` the DINO center of the global term.

    Returns:
        Scalar mean over kept pairs of the global batch (this rank's share of it under DDP,
        :func:`global_mean_scale`); 0 (with a graph) when no pair is kept anywhere.
    """
    if keep.shape != student_logits.shape[:1] or keep.dtype != torch.bool:
        raise ValueError(
            f"keep must be bool [N] = [{student_logits.shape[0]}], got {keep.dtype} {tuple(keep.shape)}"
        )
    targets = teacher_probabilities(teacher_logits, center, teacher_temperature)
    per_pair = distillation_cross_entropy(student_logits, targets, student_temperature)  # [N]
    weight = keep.to(per_pair.dtype)
    local = (per_pair * weight).sum() / weight.sum().clamp(min=1.0)
    return local * global_mean_scale(weight.sum())
