"""SimCLR with V views per crop (the multi-view InfoNCE form).

Papers: Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations" (SimCLR); Koromilas et al. 2025 (MV-InfoNCE, ``form="joint"``). The loss is
:func:`medssl.losses.info_nce_loss`, negatives gathered from every rank with gradient.

Views come from the data module (``batch["views"]``: V tensors ``[N, 1, *S]``, augmented
batched on the device) when it makes them (``data.views: V``); with ``data.views: 0`` the
method makes ``num_views`` views itself from ``batch["image"]`` with the transforms
package's :class:`~medssl.transforms.pipeline.BatchAugment`, on the batch's device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medssl.losses import info_nce_loss
from medssl.losses.infonce import InfoNCEForm
from medssl.methods.base import SSLMethod
from medssl.methods.projectors import MLPProjector, Norm
from medssl.transforms.pipeline import AugmentConfig, BatchAugment
from medssl.types import BatchKey, ViewSource


class SimCLR(SSLMethod):
    """InfoNCE over ``num_views`` augmented views of each crop.

    Args:
        num_views: V >= 2 views per crop.
        temperature: InfoNCE temperature.
        form: "pairs" (SimCLR NT-Xent generalised to V views) or "joint" (MV-InfoNCE).
        projection_dim, hidden_dim, projector_layers, projector_norm: the projector MLP.
        augment: augmentation of the views the method makes itself (used only when the batch
            carries no ``views``); a dict of :class:`AugmentConfig` fields, missing ones default.
        **kwargs: :class:`~medssl.methods.base.SSLMethod` arguments.
    """

    view_source = ViewSource.EITHER  # batch views, else num_views made here

    def __init__(
        self,
        num_views: int = 2,
        temperature: float = 0.1,
        form: InfoNCEForm = "pairs",
        projection_dim: int = 128,
        hidden_dim: int = 2048,
        projector_layers: int = 2,
        projector_norm: Norm = "layer",
        augment: dict | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if num_views < 2:
            raise ValueError(f"SimCLR needs num_views >= 2, got {num_views}")
        self.projector = MLPProjector(
            self.backbone.num_features, hidden_dim, projection_dim, projector_layers, projector_norm
        )
        self.augment_config = AugmentConfig.from_fields(augment)
        self._augment: BatchAugment | None = None

    def make_views(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        """``num_views`` independently augmented copies of ``images`` ``[N, 1, *S]``."""
        if self._augment is None:
            self._augment = BatchAugment.from_config(self.augment_config, images.shape[2:])
        return [self._augment(images, generator) for _ in range(self.hparams.num_views)]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        views = batch.get(BatchKey.VIEWS) or self.make_views(
            batch[BatchKey.IMAGE], self.step_generator(batch_idx)
        )
        if len(views) != self.hparams.num_views:
            raise ValueError(
                f"the batch carries {len(views)} views, model.num_views is {self.hparams.num_views}: set data.views to {self.hparams.num_views} (or 0 to let the method make them)"
            )
        n = views[0].shape[0]
        z = self.projector(self.backbone(torch.cat(views)))  # [V * N, D]
        z = z.unflatten(0, (len(views), n)).transpose(0, 1)  # [N, V, D]
        loss = info_nce_loss(z, temperature=self.hparams.temperature, form=self.hparams.form)
        return self.finish_step({"info_nce": loss, "total": loss})

