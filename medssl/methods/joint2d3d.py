"""Joint 2D/3D pretraining: intra-inter contrastive clustering of 2D images and volume slices.

One 2D encoder sees 2D images (radiographs, ultrasound frames) and 2D slices of volumes and is
trained with SwAV's swapped cluster assignment (Caron et al. 2020: prototypes, Sinkhorn codes
balanced over the global batch, multi-crop; :mod:`medssl.losses.swav`): the *intra* (2D) term.
A volume's slice embeddings are assembled by attention with slice-position encoding into a
volume embedding (:class:`~medssl.backbones.slice_stack.SliceAggregator`); two views of a volume
must agree on their volume-prototype codes (the *inter* / 3D term,
:func:`~medssl.losses.joint.volume_cluster_agreement_loss`), and slice embeddings hidden from
the aggregator are predicted from the others (:func:`~medssl.losses.joint.masked_slice_prediction_loss`).

Small batches: a step holds a few volumes per rank against ``num_volume_prototypes`` (512) and a
few dozen regions against ``num_prototypes``; Sinkhorn over a batch smaller than K gives diffuse
codes, so from ``queue_start_step`` on each Sinkhorn (2D and volume) runs over a queue of recent
embeddings of its two assignment views followed by the batch, while the global batch is below
its K (:class:`~medssl.losses.feature_queue.FeatureQueue`, as in SwAV).

Batch (from :class:`medssl.data.joint.JointDataModule`; either part may be absent):
    ``slices [B, S, 1, H, W]`` with ``positions [B, S]`` in ``[0, 1]`` and ``slice_keys [B]``;
    ``images [N, 1, H, W]`` with ``image_keys [N]``. Keys are per-sample integers that seed the
    crop boxes and slice masks, so those do not depend on how a batch is split over ranks.
    A plain crop batch ``image [B, 1, H, W]`` (2D images) or ``image [B, 1, X, Y, Z]``
    (volumes: ``serve_slices`` evenly spaced slices across ``slice_axis``) is accepted too,
    keyed by ``index`` when the batch has it.

Views: every 2D region (each slice, each image) gets 2 global + ``num_local_crops`` local
random resized crops. A view of a volume is one sub-volume seen one way: its slices share the
crop box and every augmentation draw (``augment_crops``: flip, quarter turn, affine warp, and
also intensity scale/shift, gamma and blur, which model one acquisition of the volume, not
slice-to-slice jitter; only the noise field is per slice), so the aggregator, the volume
agreement and the masked-slice prediction see a stack, not independently warped slices. Each
image draws its own. Boxes are keyed per sample; the augmentation draws per rank from the step
generator.

Export: the 2D encoder is the artifact's backbone; the aggregator rides along as the
``slice_aggregator`` entry, so ``build_encoder(artifact, volume=True)`` gives a 3D
:class:`~medssl.backbones.slice_stack.SliceStackEncoder` (``serve_slices`` slices across
``slice_axis``). The online probe embeds with ``self.backbone``, the 2D encoder: give it a
probe set of 2D crops (``make_probe_set`` on slices with a 2-sided ``crop_size``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.backbones.slice_stack import SliceAggregator, even_slices, normalised_positions
from medssl.losses import (
    masked_slice_prediction_loss,
    normalize_prototypes_,
    prototype_scores,
    swav_loss,
    volume_cluster_agreement_loss,
)
from medssl.losses.feature_queue import FeatureQueue
from medssl.methods.base import SSLMethod
from medssl.methods.projectors import MLPProjector, Norm
from medssl.transforms.multi_crop import MultiCrop
from medssl.transforms.pipeline import AugmentConfig
from medssl.transforms.rng import keyed_generator
from medssl.transforms.views import random_resized_boxes
from medssl.types import BatchKey, ViewSource

AGGREGATOR_HEAD = "slice_aggregator"  # its name in the checkpoint record and the artifact


class Joint2D3D(SSLMethod):
    """SwAV on 2D regions + volume cluster agreement + masked slice prediction (module doc).

    Args:
        num_prototypes: K of the 2D (slice and image) prototypes.
        num_volume_prototypes: K of the volume prototypes.
        global_crop_size, local_crop_size: 2D sizes crops are resized to (default: the region
            size and half of it).
        num_local_crops: local crops per 2D region.
        global_scale, local_scale: area fractions of the random resized crops.
        temperature, epsilon, sinkhorn_iterations: of the swapped-prediction losses.
        freeze_prototypes_steps: optimiser steps during which both prototype sets are frozen.
        queue_length, volume_queue_length: embeddings of each global view queued over all ranks
            for the 2D and the volume Sinkhorn (0: no queue); each is used only while its global
            batch (regions, volumes) is below its K.
        queue_start_step: optimiser step from which both queues are filled and used.
        mask_ratio: fraction of a volume's slices hidden for masked prediction (at least 1).
        aggregator_depth, aggregator_heads: the slice aggregator transformer.
        intra_weight, volume_weight, masked_weight: loss weights.
        projection_dim, hidden_dim, projector_layers, projector_norm: projector MLPs.
        augment: ``AugmentConfig`` fields for the 2D crops; ``augment_crops``: apply it at all.
        serve_slices, slice_axis: how the exported 3D encoder samples a volume.
        backbone: a 2D backbone of the registry.
        **kwargs: the other :class:`~medssl.methods.base.SSLMethod` arguments.
    """

    view_source = ViewSource.OWN  # multi-crops of each slice and image

    def __init__(
        self,
        num_prototypes: int = 3000,
        num_volume_prototypes: int = 512,
        global_crop_size: list[int] | None = None,
        local_crop_size: list[int] | None = None,
        num_local_crops: int = 2,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes_steps: int = 300,
        queue_length: int = 3840,
        volume_queue_length: int = 512,
        queue_start_step: int = 1000,
        mask_ratio: float = 0.25,
        aggregator_depth: int = 2,
        aggregator_heads: int = 4,
        intra_weight: float = 1.0,
        volume_weight: float = 1.0,
        masked_weight: float = 1.0,
        projection_dim: int = 128,
        hidden_dim: int = 2048,
        projector_layers: int = 2,
        projector_norm: Norm = "layer",
        augment: dict | None = None,
        augment_crops: bool = True,
        serve_slices: int = 16,
        slice_axis: int = 2,
        backbone: str = "resenc2d",
        **kwargs,
    ) -> None:
        super().__init__(backbone=backbone, **kwargs)
        if self.backbone.spatial_dims != 2:
            raise ValueError(
                f"Joint2D3D needs a 2D backbone (e.g. resenc2d), got {self.hparams.backbone!r} with {self.backbone.spatial_dims} spatial axes"
            )
        if min(num_prototypes, num_volume_prototypes) < 2 or num_local_crops < 0:
            raise ValueError(
                f"Joint2D3D needs >= 2 prototypes of each kind and num_local_crops >= 0, got {num_prototypes}, {num_volume_prototypes}, {num_local_crops}"
            )
        if not 0.0 < mask_ratio < 1.0 or serve_slices < 1 or slice_axis not in (0, 1, 2):
            raise ValueError(
                f"mask_ratio in (0, 1), serve_slices >= 1, slice_axis 0-2; got {mask_ratio}, {serve_slices}, {slice_axis}"
            )
        width = self.backbone.num_features
        self.projector = MLPProjector(
            width, hidden_dim, projection_dim, projector_layers, projector_norm
        )
        self.prototypes = nn.Linear(projection_dim, num_prototypes, bias=False)
        self.aggregator = SliceAggregator(width, aggregator_depth, aggregator_heads)
        self.volume_projector = MLPProjector(
            width, hidden_dim, projection_dim, projector_layers, projector_norm
        )
        self.volume_prototypes = nn.Linear(projection_dim, num_volume_prototypes, bias=False)
        self.slice_predictor = MLPProjector(width, hidden_dim, width, 2, projector_norm)
        normalize_prototypes_(self.prototypes)
        normalize_prototypes_(self.volume_prototypes)
        self.queue = FeatureQueue(2, queue_length, projection_dim, num_prototypes, queue_start_step)
        self.volume_queue = FeatureQueue(
            2, volume_queue_length, projection_dim, num_volume_prototypes, queue_start_step
        )
        self.crops = MultiCrop(
            global_crop_size,
            local_crop_size,
            num_local_crops,
            global_scale,
            local_scale,
            AugmentConfig.from_fields(augment) if augment_crops else None,
        )

    # keyed randomness ---------------------------------------------------------------------
    def keyed_generator(self, key: int, salt: int) -> torch.Generator:
        """Seeded by (seed, step, sample key, salt): the same on any rank split of the batch."""
        return keyed_generator(self.hparams.seed, self.global_step, key, salt)

    def keyed_boxes(self, keys: Tensor, shape: tuple[int, ...], scale, salt: int) -> Tensor:
        """One random resized box ``[len(keys), 4]`` per key."""
        return torch.cat(
            [
                random_resized_boxes(shape, tuple(scale), 1, self.keyed_generator(k, salt))
                for k in keys.tolist()
            ]
        )

    def slice_mask(self, keys: Tensor, num_slices: int) -> Tensor:
        """``[B, S]`` bool: ``max(1, round(mask_ratio * S))`` hidden slices per volume (S >= 2)."""
        hidden = min(num_slices - 1, max(1, round(self.hparams.mask_ratio * num_slices)))
        mask = torch.zeros(len(keys), num_slices, dtype=torch.bool)
        for row, key in enumerate(keys.tolist()):
            mask[
                row, torch.randperm(num_slices, generator=self.keyed_generator(key, -1))[:hidden]
            ] = True
        return mask

    # views --------------------------------------------------------------------------------
    def joint_batch(self, batch: dict) -> dict:
        """A plain crop batch ``{"image": ...}`` in the joint form (module doc); others as given."""
        if BatchKey.IMAGE not in batch or BatchKey.SLICES in batch or BatchKey.IMAGES in batch:
            return batch
        image = batch[BatchKey.IMAGE]
        b = image.shape[0]
        keys = batch.get(BatchKey.INDEX)
        keys = (torch.arange(b) + self.global_rank * b) if keys is None else keys.cpu().long()
        if image.ndim == 4:
            return {BatchKey.IMAGES: image, BatchKey.IMAGE_KEYS: keys}
        if image.ndim != 5:
            raise ValueError(
                f"image must be [B, 1, H, W] or [B, 1, X, Y, Z], got {tuple(image.shape)}"
            )
        axis, depth = 2 + self.hparams.slice_axis, image.shape[2 + self.hparams.slice_axis]
        index = even_slices(depth, min(depth, self.hparams.serve_slices))
        slices = image.index_select(axis, index.to(image.device)).movedim(
            axis, 1
        )  # [B, S, 1, h, w]
        positions = normalised_positions(index, depth).to(image.device).expand(b, -1)
        return {BatchKey.SLICES: slices, BatchKey.POSITIONS: positions, BatchKey.SLICE_KEYS: keys}

    def regions_2d(self, batch: dict) -> tuple[Tensor, Tensor, int]:
        """All 2D regions ``[M, 1, H, W]`` (slices first), one box key each, and the slice count."""
        regions, keys, n_slices = [], [], 0
        if BatchKey.SLICES in batch:
            slices = batch[BatchKey.SLICES]  # [B, S, 1, H, W]
            if (
                slices.ndim != 5
                or slices.shape[1] < 2
                or batch[BatchKey.POSITIONS].shape != slices.shape[:2]
            ):
                raise ValueError(
                    f"slices must be [B, S >= 2, 1, H, W] with positions [B, S], got {tuple(slices.shape)} and {tuple(batch[BatchKey.POSITIONS].shape)}"
                )
            n_slices = slices.shape[0] * slices.shape[1]
            regions.append(slices.flatten(0, 1))
            keys.append(
                batch[BatchKey.SLICE_KEYS].cpu().repeat_interleave(slices.shape[1])
            )  # one box per volume
        if BatchKey.IMAGES in batch:
            regions.append(batch[BatchKey.IMAGES])
            keys.append(batch[BatchKey.IMAGE_KEYS].cpu() + (1 << 40))  # images never share a volume's key
        if not regions:
            raise ValueError(f"a joint batch needs 'slices' or 'images', got keys {sorted(map(str, batch))}")
        if len(regions) == 2 and regions[0].shape[1:] != regions[1].shape[1:]:
            raise ValueError(
                f"slices {tuple(regions[0].shape[1:])} and images {tuple(regions[1].shape[1:])} must share one crop size"
            )
        return torch.cat(regions), torch.cat(keys), n_slices

    def multi_crop(self, regions: Tensor, keys: Tensor, generator: torch.Generator) -> list[Tensor]:
        """2 global then ``num_local_crops`` local crops ``[M, 1, *size]``: regions of one key
        (the slices of a volume) share each crop's box (keyed, salted by the crop index) and its
        augmentation draw (from ``generator``, one per key)."""
        unique, inverse = keys.unique(return_inverse=True)

        def draw_boxes(shape: tuple[int, ...], scale, index: int) -> Tensor:
            return self.keyed_boxes(unique, shape, scale, index)[inverse]  # [M, 4]

        return self.crops(regions, generator, draw_boxes, groups=inverse)

    # the step -----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        h = self.hparams
        normalize_prototypes_(self.prototypes)
        normalize_prototypes_(self.volume_prototypes)
        batch = self.joint_batch(batch)
        regions, keys, n_slices = self.regions_2d(batch)
        crops = self.multi_crop(regions, keys, self.step_generator(batch_idx))
        m = regions.shape[0]

        # 2D: encode each resolution in one pass, project, swapped prediction over all regions
        pooled = self.backbone(torch.cat(crops[:2]))  # [2M, F]
        features = [pooled] + ([self.backbone(torch.cat(crops[2:]))] if len(crops) > 2 else [])
        z = self.projector(torch.cat(features))
        swav = {
            "temperature": h.temperature,
            "epsilon": h.epsilon,
            "sinkhorn_iterations": h.sinkhorn_iterations,
        }
        with self.full_precision():
            scores = prototype_scores(F.normalize(z.float(), dim=1), self.prototypes.weight.float())
            queued = self.queue.scores(self.prototypes.weight, m)
            intra = swav_loss(scores.split(m), assign_crops=(0, 1), queue_scores=queued, **swav)
        self.queue.push(z[: 2 * m].split(m), self.global_step)  # after: a batch never meets itself
        terms = {"intra": intra}
        total = h.intra_weight * intra

        # 3D: the slices of each global view assembled into a volume embedding
        if n_slices:
            b, s = batch[BatchKey.SLICES].shape[:2]
            positions = batch[BatchKey.POSITIONS].float()
            view_a, view_b = (
                pooled[:n_slices].unflatten(0, (b, s)),
                pooled[m : m + n_slices].unflatten(0, (b, s)),
            )
            volumes = torch.cat(
                [self.aggregator(view_a, positions)[0], self.aggregator(view_b, positions)[0]]
            )
            zv = self.volume_projector(volumes)
            mask = self.slice_mask(batch[BatchKey.SLICE_KEYS].cpu(), s).to(pooled.device)
            _, tokens = self.aggregator(view_a, positions, mask)
            predicted = self.slice_predictor(tokens.flatten(0, 1)).unflatten(0, (b, s))
            with self.full_precision():
                volume_scores = prototype_scores(
                    F.normalize(zv.float(), dim=1), self.volume_prototypes.weight.float()
                )
                queued = self.volume_queue.scores(self.volume_prototypes.weight, b)
                terms["volume"] = volume_cluster_agreement_loss(
                    *volume_scores.split(b), queue_scores=queued, **swav
                )
                terms["masked"] = masked_slice_prediction_loss(predicted, view_a, mask)
            self.volume_queue.push(zv.split(b), self.global_step)
            total = total + h.volume_weight * terms["volume"] + h.masked_weight * terms["masked"]
        return self.finish_step({**terms, "total": total})

    def on_after_backward(self) -> None:
        if self.global_step < self.hparams.freeze_prototypes_steps:
            self.prototypes.weight.grad = None  # AdamW skips them: no update, no decay
            self.volume_prototypes.weight.grad = None

    # export -------------------------------------------------------------------------------
    def aggregator_spec(self) -> dict:
        """Constructor arguments of the aggregator and how the 3D encoder samples slices."""
        h = self.hparams
        return {
            "dim": self.aggregator.dim,
            "depth": h.aggregator_depth,
            "num_heads": h.aggregator_heads,
            "mlp_ratio": 2.0,
            "num_slices": h.serve_slices,
            "slice_axis": h.slice_axis,
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        record = checkpoint["medssl"]
        record["heads"] = {
            AGGREGATOR_HEAD: {
                "kind": AGGREGATOR_HEAD,
                "prefix": "aggregator.",
                "spec": self.aggregator_spec(),
            }
        }
