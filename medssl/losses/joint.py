"""Joint 2D/3D losses: 3D cluster agreement between two views of a volume, and masked-slice-
embedding prediction.

Papers: the joint 2D/3D intra-inter contrastive clustering idea (one 2D encoder for 2D images
and slices of volumes, slice embeddings assembled into a volume embedding); the cluster
machinery is SwAV's (Caron et al. 2020: Sinkhorn codes, swapped prediction,
:mod:`medssl.losses.swav`), the masked prediction follows MAE/iBOT (He et al. 2022, Zhou et
al. 2022: loss on masked positions only, :mod:`medssl.losses.masked_reconstruction`).

Shapes:
    volume scores ``[B, K]`` per view (cosine similarity of volume embeddings to volume
    prototypes); predicted and target slice embeddings ``[B, S, D]``; slice mask ``[B, S]``
    (True = masked, predicted).

Distributed: Sinkhorn balances codes over the global batch (all-reduced inside
:func:`~medssl.losses.swav.sinkhorn`; with a queue, over the global queue and batch,
:mod:`medssl.losses.feature_queue`); the masked term is the mean over this rank's masked
slices, so with the same number of masked slices on every rank DDP's gradient average equals
the single-process mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from medssl.losses.masked_reconstruction import masked_reconstruction_loss
from medssl.losses.swav import swav_loss


def volume_cluster_agreement_loss(
    scores_a: Tensor,
    scores_b: Tensor,
    *,
    temperature: float = 0.1,
    epsilon: float = 0.05,
    sinkhorn_iterations: int = 3,
    gather: bool = True,
    queue_scores: Sequence[Tensor] | None = None,
) -> Tensor:
    """Swapped prediction of each view's Sinkhorn codes from the other view: ``[B, K]`` each.

    The 3D term: view a predicts the (balanced) cluster of view b of the same volume and
    vice versa. ``queue_scores``: optional ``[N, K]`` queued volume embeddings of view a and
    of view b scored against the prototypes; each view's codes are then balanced over its
    queue and the batch (:func:`~medssl.losses.swav.swav_loss`). Scalar.
    """
    if scores_a.ndim != 2 or scores_a.shape != scores_b.shape:
        raise ValueError(
            f"volume scores must be two [B, K] tensors of one shape, got {tuple(scores_a.shape)} "
            f"and {tuple(scores_b.shape)}"
        )
    return swav_loss(
        [scores_a, scores_b],
        assign_crops=(0, 1),
        temperature=temperature,
        epsilon=epsilon,
        sinkhorn_iterations=sinkhorn_iterations,
        gather=gather,
        queue_scores=queue_scores,
    )


def masked_slice_prediction_loss(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean ``2 - 2 cos(prediction, target)`` over masked slices; the target gets no gradient.

    Args:
        prediction: ``[B, S, D]`` embeddings predicted at every slice position.
        target: ``[B, S, D]`` the encoder's own slice embeddings (detached here).
        mask: ``[B, S]`` bool, True where the slice was hidden from the aggregator.

    Returns:
        Scalar in ``[0, 4]``; 0 when every masked prediction points along its target.
    """
    if prediction.ndim != 3 or prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must be [B, S, D] of one shape, got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}"
        )
    if mask.shape != prediction.shape[:2]:
        raise ValueError(
            f"mask must be [B, S] = {tuple(prediction.shape[:2])}, got {tuple(mask.shape)}"
        )
    # squared distance of unit vectors = 2 - 2 cos: the masked L2 helper does the counting
    return (
        masked_reconstruction_loss(
            F.normalize(prediction.float(), dim=-1),
            F.normalize(target.detach().float(), dim=-1),
            mask,
            kind="l2",
        )
        * prediction.shape[-1]
    )
