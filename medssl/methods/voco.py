"""VoCo: volume contrast with geometric context priors.

Papers: Wu, Zhuang, Chen, "VoCo: A Simple-yet-Effective Volume Contrastive Learning
Framework for 3D Medical Image Analysis", CVPR 2024; the extended version "Large-Scale 3D
Medical Image Pre-training with Geometric Context Priors" (arXiv:2410.09890) adds the EMA
teacher and the inter-volume term. The loss terms live in :mod:`medssl.losses.voco`.

Each crop the data module delivers is a *region* ``[1, *S]``. It is cut into a grid of
``grid_size ** grid_dims`` base crops (``grid_dims=2``: an n x n grid in the first two
axes, the axial plane of a RAS store, each tile the full depth, as in the paper;
``grid_dims=3``: n x n x n), and ``num_random_crops`` crops of the tile's size are drawn at
random positions in the region. A random crop's position label is its overlap fraction with
every base crop; the model predicts it from the cosine similarity of its embedding to the
base embeddings.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from medssl.losses import overlap_labels, voco_loss
from medssl.methods.base import SSLMethod, ema_update
from medssl.methods.projectors import MLPProjector, Norm
from medssl.transforms.views import base_grid, crop_boxes, random_boxes
from medssl.types import BatchKey, ViewSource


class VoCo(SSLMethod):
    """VoCo on regions ``batch["image"]: [B, 1, *S]`` (2D or 3D).

    Args:
        grid_size: n, base crops per gridded axis (the paper: 4).
        grid_dims: 2 (n x n in-plane, default) or 3 (n x n x n).
        crop_size: spatial size every base and random crop is resized to before encoding
            (default: the tile size, no resize).
        num_random_crops: random crops per region (K).
        projection_dim, hidden_dim, projector_layers, projector_norm: the projector MLP.
        position_weight, regularization_weight, inter_volume_weight: loss weights.
        ema_momentum: momentum of the EMA teacher (backbone + projector) of the extended
            version: crops are then scored against the teacher's bases and the inter-volume
            term is on. None (default): the CVPR form, student bases, no inter-volume term.
            From a random initialisation the teacher form kept the base embeddings collapsed
            (regulariser stuck at 1) in our small-data tests, where the CVPR form learned; start
            the teacher from a pretrained checkpoint or check ``train/regularization`` falls.
        **kwargs: :class:`~medssl.methods.base.SSLMethod` arguments (backbone, lr, ...).
    """

    view_source = ViewSource.OWN  # grid and random crops of each region

    def __init__(
        self,
        grid_size: int = 4,
        grid_dims: int = 2,
        crop_size: list[int] | None = None,
        num_random_crops: int = 4,
        projection_dim: int = 512,
        hidden_dim: int = 2048,
        projector_layers: int = 2,
        projector_norm: Norm = "layer",
        position_weight: float = 1.0,
        regularization_weight: float = 1.0,
        inter_volume_weight: float = 1.0,
        ema_momentum: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if grid_size < 2 or grid_dims not in (2, 3) or num_random_crops < 1:
            raise ValueError(
                f"VoCo needs grid_size >= 2, grid_dims 2 or 3, num_random_crops >= 1; got {grid_size}, {grid_dims}, {num_random_crops}"
            )
        if grid_dims > self.backbone.spatial_dims:
            raise ValueError(
                f"grid_dims {grid_dims} exceeds the backbone's {self.backbone.spatial_dims} spatial axes"
            )
        self.projector = MLPProjector(
            self.backbone.num_features, hidden_dim, projection_dim, projector_layers, projector_norm
        )
        self.teacher: nn.ModuleDict | None = None
        if ema_momentum is not None:
            self.teacher = nn.ModuleDict(
                {
                    "backbone": copy.deepcopy(self.backbone),
                    "projector": copy.deepcopy(self.projector),
                }
            )
            self.teacher.requires_grad_(False)

    def embed(self, crops: Tensor, teacher: bool = False) -> Tensor:
        """``[M, 1, *size] -> [M, projection_dim]``, by the student or the EMA teacher."""
        net = self.teacher if teacher else {"backbone": self.backbone, "projector": self.projector}
        return net["projector"](net["backbone"](crops))

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        h = self.hparams
        regions = batch[BatchKey.IMAGE]  # [B, 1, *S]
        b, shape = regions.shape[0], regions.shape[2:]
        generator = self.step_generator(batch_idx)

        # views: base crops on the grid, random crops of the tile size; labels from the boxes
        bases = base_grid(shape, h.grid_size, h.grid_dims)  # [K, 2d]
        tile = (bases[0, len(shape) :] - bases[0, : len(shape)]).tolist()
        randoms = random_boxes(shape, tile, b, h.num_random_crops, generator)  # [B, N, 2d]
        labels = overlap_labels(randoms, bases).to(regions.device)  # [B, N, K]
        size = h.crop_size or tile
        crops = torch.cat([crop_boxes(regions, bases, size), crop_boxes(regions, randoms, size)], 1)
        crops = crops.flatten(0, 1)  # [B * (K + N), 1, *size]

        # encode + project (student; teacher without gradient)
        k = bases.shape[0]
        z = self.embed(crops).unflatten(0, (b, -1))  # [B, K + N, D]
        teacher_bases = teacher_crops = None
        if self.teacher is not None:
            with torch.no_grad():
                zt = self.embed(crops, teacher=True).unflatten(0, (b, -1))
            teacher_bases, teacher_crops = zt[:, :k], zt[:, k:]

        with self.full_precision():
            terms = voco_loss(
                z[:, k:].float(),
                z[:, :k].float(),
                labels,
                teacher_crop_embeddings=None if teacher_crops is None else teacher_crops.float(),
                teacher_base_embeddings=None if teacher_bases is None else teacher_bases.float(),
                position_weight=h.position_weight,
                regularization_weight=h.regularization_weight,
                inter_volume_weight=h.inter_volume_weight,
            )
        return self.finish_step(terms)

    def after_optimizer_step(self) -> None:
        if self.teacher is not None:
            ema_update(self.teacher["backbone"], self.backbone, self.hparams.ema_momentum)
            ema_update(self.teacher["projector"], self.projector, self.hparams.ema_momentum)
