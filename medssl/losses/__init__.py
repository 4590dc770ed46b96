"""Self-supervised losses: pure torch, one loss per module, each with its paper and shapes.

Every loss that looks across the batch (InfoNCE negatives, Sinkhorn, DINO centering) is
correct under DDP through :mod:`medssl.losses.distributed` and reduces to the single-process
computation when ``torch.distributed`` is not initialised.
"""

from __future__ import annotations

from medssl.losses.anatomy import global_mean_scale, matched_distillation_loss, mine_positives
from medssl.losses.distillation import (
    DINOLoss,
    dino_loss,
    distillation_cross_entropy,
    ibot_patch_loss,
    teacher_probabilities,
    updated_center,
)
from medssl.losses.distributed import (
    all_reduce_max,
    all_reduce_sum,
    gather_with_grad,
    is_distributed,
    rank,
    world_size,
)
from medssl.losses.infonce import info_nce_loss
from medssl.losses.joint import masked_slice_prediction_loss, volume_cluster_agreement_loss
from medssl.losses.masked_reconstruction import (
    broadcast_mask,
    masked_reconstruction_loss,
    normalize_patches,
)
from medssl.losses.swav import (
    normalize_prototypes_,
    prototype_scores,
    sinkhorn,
    swapped_prediction,
    swav_loss,
)
from medssl.losses.voco import (
    base_regularization,
    inter_volume_loss,
    overlap_labels,
    position_logits,
    position_loss,
    voco_loss,
)

__all__ = [
    "DINOLoss",
    "all_reduce_max",
    "all_reduce_sum",
    "base_regularization",
    "broadcast_mask",
    "dino_loss",
    "distillation_cross_entropy",
    "gather_with_grad",
    "global_mean_scale",
    "ibot_patch_loss",
    "info_nce_loss",
    "inter_volume_loss",
    "is_distributed",
    "masked_reconstruction_loss",
    "masked_slice_prediction_loss",
    "matched_distillation_loss",
    "mine_positives",
    "normalize_patches",
    "normalize_prototypes_",
    "overlap_labels",
    "position_logits",
    "position_loss",
    "prototype_scores",
    "rank",
    "sinkhorn",
    "swapped_prediction",
    "swav_loss",
    "teacher_probabilities",
    "updated_center",
    "voco_loss",
    "volume_cluster_agreement_loss",
    "world_size",
]
