"""VoCo: volume contrast with geometric context priors: its two published forms, and ours.

Papers: Wu, Zhuang, Chen, "VoCo: A Simple-yet-Effective Volume Contrastive Learning
Framework for 3D Medical Image Analysis", CVPR 2024 (code: Luffy03/VoCo); the extended
version "Large-Scale 3D Medical Image Pre-training with Geometric Context Priors"
(arXiv:2410.09890, code: Luffy03/Large-Scale-Medical). The loss terms live in
:mod:`medssl.losses.voco`.

Each crop the data module delivers is a *region* ``[1, *S]``. It is cut into a grid of
``grid_size ** grid_dims`` base crops (``grid_dims=2``: an n x n grid in the first two
axes, the axial plane of a RAS store, each tile the full depth, as in the paper;
``grid_dims=3``: n x n x n), and ``num_random_crops`` crops of the tile's size are drawn at
random positions in the region. A random crop's position label is its overlap fraction with
every base crop. Every crop is then augmented on its own draw (flips, quarter turns, an
intensity shift: :func:`crop_augmentation`), as the reference transforms each crop.

Embedding: the global average of *every* feature map of the backbone, concatenated
(:func:`multi_scale_features`), through :class:`~medssl.methods.projectors.VoCoProjector`.

Forms (``form``):

* ``cvpr``: a full EMA teacher (backbone + projector), momentum 0.9; the prediction averages
  student-crop x teacher-base and teacher-crop x student-base similarities.
* ``extended``: one shared backbone; only the projector has an EMA teacher (momentum 0.9);
  the student's pooled features pass Dropout1d(0.2) first; intra-volume term against the
  teacher's bases, plus the inter-volume term.
* ``student-bases``: medssl's earlier form, kept because it learned faster than both in the
  short phantom runs (``tests/methods/test_voco_learns.py``): no teacher; random crops are
  scored against the student's own bases, ``-log(1 - p)`` negatives.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medssl.backbones import Backbone
from medssl.backbones.base import global_average
from medssl.losses.voco import Form, overlap_labels, voco_loss
from medssl.methods.base import SSLMethod, ema_update
from medssl.methods.projectors import VoCoProjector
from medssl.transforms import BatchAugment, RandFlip, RandRotate90, RandScaleShift
from medssl.transforms.views import base_grid, crop_boxes, random_boxes
from medssl.types import BatchKey, ViewSource

# hidden and output width of the head: the references' (student-bases: the CVPR one)
HEAD_WIDTH = {"cvpr": 2048, "extended": 1024, "student-bases": 2048}
FEATURE_DROPOUT = 0.2  # extended form, on the student's pooled features


def multi_scale_features(backbone: Backbone, x: Tensor) -> Tensor:
    """``[M, C, *S] -> [M, sum(backbone.feature_channels)]``: every map's global average."""
    return torch.cat([global_average(m) for m in backbone.forward_features(x)], dim=1)


def crop_augmentation(size: Sequence[int]) -> BatchAugment:
    """The reference's per-crop augmentation for crops of spatial ``size``: a flip along each
    axis with probability 0.2, 1-3 quarter turns in the first plane (axes 0, 1; only when
    it is square) with probability 0.2, an intensity shift in [-0.1, 0.1] with probability 0.1."""
    dims = len(size)
    steps: list = [RandFlip(0.2, spatial_dims=dims)]
    if size[0] == size[1]:
        steps.append(RandRotate90(0.2, [(0, 1)], spatial_dims=dims))
    steps.append(RandScaleShift(0.1, (1.0, 1.0), (-0.1, 0.1), spatial_dims=dims))
    return BatchAugment(steps, dims)


def embedding_dropout(features: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """The extended code's ``nn.Dropout1d(p)`` on ``[M, F]``: torch reads a 2D input as one
    unbatched ``[C, L]`` sample, so it zeroes *whole rows* (the embeddings of about ``p`` of
    the crops) and scales the others by ``1 / (1 - p)``. Drawn from ``generator`` (a resumed
    run drops what an uninterrupted one would)."""
    keep = torch.rand(features.shape[0], 1, generator=generator) >= p
    return features * keep.to(features.device, features.dtype) / (1.0 - p)


class VoCo(SSLMethod):
    """VoCo on regions ``batch["image"]: [B, 1, *S]`` (2D or 3D).

    Args:
        form: ``"cvpr"``, ``"extended"`` or ``"student-bases"`` (module doc).
        grid_size: n, base crops per gridded axis (CVPR code: 4; extended code: 3).
        grid_dims: 2 (n x n in-plane, default) or 3 (n x n x n).
        crop_size: spatial size every base and random crop is resized to before encoding
            (default: the tile size, no resize).
        num_random_crops: random crops per region (N).
        projection_dim, hidden_dim: head widths (default: the form's reference, 2048 for
            ``cvpr`` and ``student-bases``, 1024 for ``extended``).
        ema_momentum: momentum of the EMA teacher (both references: 0.9; ``student-bases``
            has no teacher).
        augment: augment every crop on its own draw (:func:`crop_augmentation`).
        position_weight, regularization_weight, inter_volume_weight: loss weights (the
            references: all 1; the inter-volume term exists in the extended form only).
        **kwargs: :class:`~medssl.methods.base.SSLMethod` arguments (backbone, lr, ...).
    """

    view_source = ViewSource.OWN  # grid and random crops of each region

    def __init__(
        self,
        form: Form = "cvpr",
        grid_size: int = 4,
        grid_dims: int = 2,
        crop_size: list[int] | None = None,
        num_random_crops: int = 4,
        projection_dim: int | None = None,
        hidden_dim: int | None = None,
        ema_momentum: float = 0.9,
        augment: bool = True,
        position_weight: float = 1.0,
        regularization_weight: float = 1.0,
        inter_volume_weight: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if form not in HEAD_WIDTH:
            raise ValueError(f"VoCo form {form!r}: expected one of {', '.join(HEAD_WIDTH)}")
        if grid_size < 2 or grid_dims not in (2, 3) or num_random_crops < 1:
            raise ValueError(
                f"VoCo needs grid_size >= 2, grid_dims 2 or 3, num_random_crops >= 1; got {grid_size}, {grid_dims}, {num_random_crops}"
            )
        if grid_dims > self.backbone.spatial_dims:
            raise ValueError(
                f"grid_dims {grid_dims} exceeds the backbone's {self.backbone.spatial_dims} spatial axes"
            )
        if not 0.0 <= ema_momentum <= 1.0:
            raise ValueError(f"ema_momentum must lie in [0, 1], got {ema_momentum}")
        width = HEAD_WIDTH[form]
        self.projector = VoCoProjector(
            sum(self.backbone.feature_channels), hidden_dim or width, projection_dim or width
        )
        teacher = {}  # what the EMA teacher copies: the form's
        if form in ("cvpr", "extended"):
            teacher["projector"] = copy.deepcopy(self.projector)
        if form == "cvpr":
            teacher["backbone"] = copy.deepcopy(self.backbone)
        self.teacher = nn.ModuleDict(teacher)
        self.teacher.requires_grad_(False)
        self._augment: dict[tuple[int, ...], BatchAugment] = {}

    def make_views(self, regions: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Base crops then random crops of ``regions [B, 1, *S]``, each augmented on its own
        draw: ``([B, K + N, 1, *size], labels [B, N, K])``."""
        h = self.hparams
        b, shape = regions.shape[0], regions.shape[2:]
        bases = base_grid(shape, h.grid_size, h.grid_dims)  # [K, 2d]
        tile = (bases[0, len(shape) :] - bases[0, : len(shape)]).tolist()
        randoms = random_boxes(shape, tile, b, h.num_random_crops, generator)  # [B, N, 2d]
        labels = overlap_labels(randoms, bases).to(regions.device)  # [B, N, K]
        size = tuple(h.crop_size or tile)
        crops = torch.cat([crop_boxes(regions, bases, size), crop_boxes(regions, randoms, size)], 1)
        if h.augment:
            augment = self._augment.setdefault(size, crop_augmentation(size))
            crops = augment(crops.flatten(0, 1), generator).unflatten(0, crops.shape[:2])
        return crops, labels

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        h = self.hparams
        regions = batch[BatchKey.IMAGE]  # [B, 1, *S]
        b = regions.shape[0]

        # views: base crops on the grid, random crops of the tile size, labels from the boxes
        generator = self.step_generator(batch_idx)
        crops, labels = self.make_views(regions, generator)
        crops, k = crops.flatten(0, 1), labels.shape[2]  # [B * (K + N), 1, *size]

        # encode: multi-scale pooled features; the teacher (if any) without gradient
        features = multi_scale_features(self.backbone, crops)
        zt = None
        if "projector" in self.teacher:
            with torch.no_grad():
                if "backbone" in self.teacher:
                    teacher_features = multi_scale_features(self.teacher["backbone"], crops)
                else:
                    teacher_features = features  # extended: one shared backbone
                zt = self.teacher["projector"](teacher_features).unflatten(0, (b, -1)).float()
        if h.form == "extended":
            features = embedding_dropout(features, FEATURE_DROPOUT, generator)
        z = self.projector(features).unflatten(0, (b, -1)).float()  # [B, K + N, D]

        with self.full_precision():
            terms = voco_loss(
                z[:, k:],
                z[:, :k],
                labels,
                teacher_crop_embeddings=None if zt is None else zt[:, k:],
                teacher_base_embeddings=None if zt is None else zt[:, :k],
                form=h.form,
                position_weight=h.position_weight,
                regularization_weight=h.regularization_weight,
                inter_volume_weight=h.inter_volume_weight,
            )
        return self.finish_step(terms)

    def after_optimizer_step(self) -> None:
        for (
            name,
            teacher,
        ) in self.teacher.items():  # cvpr: backbone + projector; extended: projector
            ema_update(teacher, getattr(self, name), self.hparams.ema_momentum)
