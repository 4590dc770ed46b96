"""SwAV: swapped prediction of cluster assignments computed by Sinkhorn-Knopp.

Paper:
    Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments" (SwAV), Section 3.1 and Algorithm 1; Cuturi 2013, "Sinkhorn Distances".

``scores`` are cosine similarities of L2-normalised embeddings ``[B, D]`` to L2-normalised
prototypes ``[K, D]`` (:func:`prototype_scores`; keep the prototype rows normalised with
:func:`normalize_prototypes_` after every optimiser step). For each crop used for assignment,
:func:`sinkhorn` computes codes ``Q`` (no gradient); every *other* crop predicts them from its
own scores through a softmax at ``temperature`` (:func:`swapped_prediction`).

Sinkhorn convention: the returned ``Q [B, K]`` has rows that sum to 1 (each sample's
assignment is a distribution over prototypes) and, over the *global* batch of ``B_g``
samples, columns that sum to ``B_g / K`` (every prototype receives an equal share). The
row sums are exact (the last step normalises rows); the column balance holds to the
precision the number of iterations reaches (3 in the paper, enough for training).

Distributed: the sums over samples are all-reduced, so the codes are balanced over the
global batch and equal the rows of the single-process codes on the concatenated batch.
Each rank's loss is the mean over its own samples; no gradient crosses ranks.

Small batches: with ``B_g < K`` no code entry can exceed about ``B_g / K``, so codes are
diffuse; ``swav_loss(..., queue_scores=...)`` computes each assignment crop's codes over
``[queue; batch]`` and keeps the batch's rows (:mod:`medssl.losses.feature_queue`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.losses.distributed import all_reduce_max, all_reduce_sum


def normalize_prototypes_(prototypes: nn.Linear | Tensor) -> Tensor:
    """L2-normalise prototype rows ``[K, D]`` in place (no gradient); returns the weight."""
    weight = prototypes.weight if isinstance(prototypes, nn.Linear) else prototypes
    if weight.ndim != 2:
        raise ValueError(f"prototypes must be [K, D], got {tuple(weight.shape)}")
    with torch.no_grad():
        weight.copy_(F.normalize(weight, dim=1))
    return weight


def prototype_scores(embeddings: Tensor, prototypes: Tensor) -> Tensor:
    """Cosine similarities ``[B, D] x [K, D] -> [B, K]``."""
    if embeddings.ndim != 2 or prototypes.ndim != 2 or embeddings.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"embeddings must be [B, D] and prototypes [K, D], got {tuple(embeddings.shape)} "
            f"and {tuple(prototypes.shape)}"
        )
    return F.normalize(embeddings, dim=1) @ F.normalize(prototypes, dim=1).T


@torch.no_grad()
def sinkhorn(
    scores: Tensor, epsilon: float = 0.05, iterations: int = 3, gather: bool = True
) -> Tensor:
    """Balanced soft assignments of samples to prototypes (SwAV Algorithm 1, distributed).

    Args:
        scores: ``[B, K]`` local scores (cosine similarities); not modified.
        epsilon: entropic regularisation ``> 0``; smaller gives harder codes.
        iterations: Sinkhorn-Knopp iterations ``>= 1``.
        gather: all-reduce the sums over samples so codes balance over the global batch.

    Returns:
        ``Q [B, K]`` in float32 (float64 if given), no gradient; rows sum to 1, columns sum
        to ``B_global / K`` over the global batch (module doc).
    """
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise ValueError(f"scores must be [B, K] with B, K >= 1, got {tuple(scores.shape)}")
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    reduce = all_reduce_sum if gather else (lambda x: x)
    logits = scores.detach().to(torch.promote_types(scores.dtype, torch.float32)) / epsilon
    # a scalar shift cancels in the first normalisation; it must be the same on every rank
    shift = all_reduce_max(logits.max()) if gather else logits.max()
    q = torch.exp(logits - shift).T  # [K, B]
    n_prototypes = q.shape[0]
    n_samples = reduce(torch.tensor(float(q.shape[1]), dtype=q.dtype, device=q.device))
    q = q / reduce(q.sum())
    for _ in range(iterations):
        q = q / reduce(q.sum(dim=1, keepdim=True)) / n_prototypes  # each prototype: 1/K of the mass
        q = q / q.sum(dim=0, keepdim=True) / n_samples  # each sample: 1/B_global of the mass
    return (q * n_samples).T


def swapped_prediction(scores: Tensor, codes: Tensor, temperature: float) -> Tensor:
    """Cross-entropy ``-mean_b sum_k Q[b, k] log softmax(scores[b] / T)[k]``; ``[B, K]`` each."""
    if scores.shape != codes.shape or scores.ndim != 2:
        raise ValueError(
            f"scores and codes must both be [B, K], got {tuple(scores.shape)} "
            f"and {tuple(codes.shape)}"
        )
    log_p = F.log_softmax(scores.float() / temperature, dim=1)
    return -(codes.to(log_p.dtype) * log_p).sum(dim=1).mean()


def swav_loss(
    scores_per_crop: Sequence[Tensor],
    assign_crops: Sequence[int] = (0, 1),
    *,
    temperature: float = 0.1,
    epsilon: float = 0.05,
    sinkhorn_iterations: int = 3,
    gather: bool = True,
    queue_scores: Sequence[Tensor] | None = None,
) -> Tensor:
    """SwAV swapped-prediction loss with multi-crop.

    Args:
        scores_per_crop: one ``[B, K]`` score tensor per crop (global crops first by
            convention; small crops may follow). All share B and K.
        assign_crops: indices of the crops whose codes are computed (the global crops).
        temperature: softmax temperature ``> 0`` of the predictions.
        epsilon, sinkhorn_iterations, gather: passed to :func:`sinkhorn`.
        queue_scores: optional, one ``[N_i, K]`` tensor per assignment crop (in
            ``assign_crops`` order): queued embeddings scored against the prototypes
            (:meth:`~medssl.losses.feature_queue.FeatureQueue.scores`). Crop i's codes are
            the batch rows of ``sinkhorn([queue_scores[i]; scores[i]])``; no gradient.

    Returns:
        Scalar: mean over (assign crop i, other crop v != i) of the swapped cross-entropy.
    """
    scores = list(scores_per_crop)
    if len(scores) < 2:
        raise ValueError(f"SwAV needs at least 2 crops, got {len(scores)}")
    shape = scores[0].shape
    if len(shape) != 2 or any(s.shape != shape for s in scores):
        raise ValueError(
            f"every crop's scores must be one [B, K] shape, got {[tuple(s.shape) for s in scores]}"
        )
    if (
        not assign_crops
        or any(not 0 <= i < len(scores) for i in assign_crops)
        or len(set(assign_crops)) != len(assign_crops)
    ):
        raise ValueError(
            f"assign_crops must be distinct indices into {len(scores)} crops, "
            f"got {tuple(assign_crops)}"
        )
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if queue_scores is not None and (
        len(queue_scores) != len(assign_crops)
        or any(q.ndim != 2 or q.shape[1] != shape[1] for q in queue_scores)
    ):
        raise ValueError(
            f"queue_scores must be one [N, {shape[1]}] tensor per assignment crop "
            f"({len(assign_crops)}), got {[tuple(q.shape) for q in queue_scores]}"
        )
    terms = []
    for j, i in enumerate(assign_crops):
        assigned = scores[i] if queue_scores is None else torch.cat([queue_scores[j], scores[i]])
        codes = sinkhorn(assigned, epsilon=epsilon, iterations=sinkhorn_iterations, gather=gather)
        codes = codes[codes.shape[0] - shape[0] :]  # the batch's rows: the queue's only balance
        terms.extend(
            swapped_prediction(s, codes, temperature) for v, s in enumerate(scores) if v != i
        )
    return torch.stack(terms).mean()
