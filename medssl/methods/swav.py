"""SwAV: swapped prediction of Sinkhorn cluster assignments, with multi-crop.

Paper: Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments" (SwAV). Loss and Sinkhorn: :mod:`medssl.losses.swav` (codes balanced over the
global batch, statistics all-reduced across ranks).

From each region ``batch["image"]: [B, 1, *S]`` the method cuts 2 global crops (a fraction
``global_scale`` of the region's volume, resized to ``global_crop_size``) and
``num_local_crops`` local crops (``local_scale``, resized to ``local_crop_size``), augments
each crop set batched on the device (:class:`~medssl.transforms.multi_crop.MultiCrop`, boxes
and augmentation drawn from the step generator), and predicts each global crop's codes from every other
crop. Prototypes are L2-normalised before every step and frozen (no gradient) for the first
``freeze_prototypes_steps`` optimiser steps, as in the paper.

Small batches: with 2-8 regions per rank against thousands of prototypes, codes over the batch
alone are diffuse, so from ``queue_start_step`` on the codes of the two global crops are
computed over a queue of the last ``queue_length`` embeddings of each (global over ranks,
checkpointed) followed by the batch, as the paper's small-batch setting does; the queue is
off when the global batch alone is at least ``num_prototypes``
(:class:`~medssl.losses.feature_queue.FeatureQueue`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.losses import normalize_prototypes_, prototype_scores, swav_loss
from medssl.losses.feature_queue import FeatureQueue
from medssl.methods.base import SSLMethod
from medssl.methods.projectors import MLPProjector, Norm
from medssl.transforms.multi_crop import MultiCrop
from medssl.transforms.pipeline import AugmentConfig
from medssl.types import BatchKey, ViewSource


class SwAV(SSLMethod):
    """SwAV with 2 global + ``num_local_crops`` local crops per region.

    Args:
        num_prototypes: K clusters.
        global_crop_size, local_crop_size: spatial sizes crops are resized to (default: the
            region size and half of it).
        num_local_crops: local crops per region (0: two global crops only).
        global_scale, local_scale: ranges of the region-volume fraction a crop covers.
        temperature, epsilon, sinkhorn_iterations: of :func:`medssl.losses.swav_loss`.
        freeze_prototypes_steps: optimiser steps during which prototypes get no update.
        queue_length: embeddings of each global crop queued over all ranks (0: no queue);
            used only while ``batch × world size < num_prototypes``.
        queue_start_step: optimiser step from which the queue is filled and used.
        projection_dim, hidden_dim, projector_layers, projector_norm: the projector MLP.
        augment: per-crop augmentation, a dict of ``AugmentConfig`` fields; None: defaults.
        **kwargs: :class:`~medssl.methods.base.SSLMethod` arguments.
    """

    view_source = ViewSource.OWN  # multi-crops of each region

    def __init__(
        self,
        num_prototypes: int = 3000,
        global_crop_size: list[int] | None = None,
        local_crop_size: list[int] | None = None,
        num_local_crops: int = 4,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes_steps: int = 300,
        queue_length: int = 3840,
        queue_start_step: int = 1000,
        projection_dim: int = 128,
        hidden_dim: int = 2048,
        projector_layers: int = 2,
        projector_norm: Norm = "layer",
        augment: dict | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if num_prototypes < 2 or num_local_crops < 0:
            raise ValueError(
                f"SwAV needs num_prototypes >= 2 and num_local_crops >= 0, got {num_prototypes}, {num_local_crops}"
            )
        self.projector = MLPProjector(
            self.backbone.num_features, hidden_dim, projection_dim, projector_layers, projector_norm
        )
        self.prototypes = nn.Linear(projection_dim, num_prototypes, bias=False)
        normalize_prototypes_(self.prototypes)
        self.queue = FeatureQueue(2, queue_length, projection_dim, num_prototypes, queue_start_step)
        self.multi_crop = MultiCrop(
            global_crop_size,
            local_crop_size,
            num_local_crops,
            global_scale,
            local_scale,
            AugmentConfig.from_fields(augment),
        )

    def _check_crop_sizes(self, crops: list[Tensor]) -> None:
        """One line instead of a pooling error deep in the backbone: every crop needs at least the
        backbone's total stride along each axis (half of a 16-slice region is 8 slices)."""
        stride = int(self.backbone.feature_strides[-1])
        for name, crop in (("global", crops[0]), ("local", crops[-1])):
            if min(crop.shape[2:]) < stride:
                raise ValueError(
                    f"SwAV: {name} crops of {tuple(crop.shape[2:])} voxels are smaller than the backbone's total stride "
                    f"{stride} along an axis; set model.init_args.{name}_crop_size to at least {stride} per axis (or a larger data.crop_size)"
                )

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        normalize_prototypes_(self.prototypes)
        crops = self.multi_crop(batch[BatchKey.IMAGE], self.step_generator(batch_idx))
        self._check_crop_sizes(crops)

        # encode each resolution in one pass, project, score against the prototypes
        n_global, b = 2, crops[0].shape[0]
        features = [self.backbone(torch.cat(crops[:n_global]))]
        if len(crops) > n_global:
            features.append(self.backbone(torch.cat(crops[n_global:])))
        z = self.projector(torch.cat(features))  # [(2 + L) * B, D]
        with self.full_precision():
            z = F.normalize(z.float(), dim=1)
            scores = prototype_scores(z, self.prototypes.weight.float()).split(b)  # per crop [B, K]
            loss = swav_loss(
                scores,
                assign_crops=(0, 1),
                temperature=self.hparams.temperature,
                epsilon=self.hparams.epsilon,
                sinkhorn_iterations=self.hparams.sinkhorn_iterations,
                queue_scores=self.queue.scores(self.prototypes.weight, b),
            )
            self.queue.push(z[: n_global * b].split(b), self.global_step)  # after: never self
        return self.finish_step({"swav": loss, "total": loss})

    def on_after_backward(self) -> None:
        if self.global_step < self.hparams.freeze_prototypes_steps:
            self.prototypes.weight.grad = None  # AdamW skips it: no update, no decay
