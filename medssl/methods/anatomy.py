"""Anatomy-aware contrast: mined cross-volume positives, self-distillation, alignment, masked reconstruction.

Papers: Jiang et al. 2023, "Anatomical Invariance Modeling and Semantic Alignment for
Self-supervised Learning in 3D Medical Image Analysis" (Alice); Azabou et al. 2021, "Mine
Your Own vieW" (MYOW: positives mined in the target network's embedding space); Caron et
al. 2021 (DINO) and Zhou et al. 2022 (iBOT) for the teacher-student terms; Xie et al. 2022
(SimMIM) for masking input patches and reconstructing only them.

Input: ``batch["image"]: [N, 1, *S]`` crops with ``batch["body"]: [N, 3]`` (crop centres in
normalised body coordinates, :mod:`medssl.data.crops`) and ``batch["volume"]: [N]``; two
views from ``batch["views"]`` when the data module gives them, else the crop twice (the
masks still differ). Without ``body`` every crop counts as the same place (the teacher alone
mines); without ``volume`` every crop is its own volume. With
:class:`~medssl.data.anatomy_pairs.AnatomyPairDataModule` every anchor's partner (same body
coordinates, another volume) is in the batch by construction, so nearly every pair is kept;
with its ``refine_margin`` > 0 the step first moves partners to their anchors' confident
teacher matches in the partners' windows, then augments (:mod:`~medssl.methods.anatomy_refine`).
Each view is cut from its own random box of the crop (``view_scale``, DINO's global crops).

Step: the EMA teacher encodes both unmasked views: last feature map ``[2N, C, *g]`` →
tokens ``[2N, P, C]``, global = their mean. The student encodes the views with a share
``mask_ratio`` of the input patches (aligned with the last map's stride) replaced by a
learned mask value. Terms (each off with weight 0):

- ``global``: DINO between views; ``patch``: iBOT on masked patches;
- ``anatomy``: DINO cross-entropy from a crop to the teacher of its mined positive
  (:func:`~medssl.losses.mine_positives` over the gathered global batch);
- ``alignment``: :class:`~medssl.methods.alignment.ConditionalAlignment` completes the masked
  crop's tokens from its positive's teacher tokens, towards the teacher's own tokens;
- ``reconstruction``: a linear decoder predicts the (patch-normalised) voxels of masked patches.

DINO schedules: teacher temperature warmed up linearly, EMA momentum raised to 1 on a cosine,
the head's prototypes frozen for the first ``freeze_last_layer`` steps.

DDP: teacher statistics are gathered without gradient, DINO/iBOT centres all-reduced, means
over kept pairs or masked patches normalised by their global count, and masks drawn for the
crop (not its place in the batch), so 2 ranks step as 1 process on the global batch.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.losses import (
    DINOLoss,
    distillation,
    gather_with_grad,
    ibot_patch_loss,
    matched_distillation_loss,
    mine_positives,
    normalize_patches,
    rank,
    updated_center,
)
from medssl.methods.alignment import ConditionalAlignment
from medssl.methods.anatomy_refine import data_module_augment, refined_batch
from medssl.methods.base import SSLMethod, ema_update
from medssl.methods.distillation_head import DistillationHead
from medssl.methods.masked_patches import (
    keyed_patch_masks,
    keyed_view_boxes,
    masked_mean_term,
    patch_stride,
    pooled_patches,
    upsample_mask,
)
from medssl.methods.projectors import Norm
from medssl.types import BatchKey, ViewSource

log = logging.getLogger("medssl.methods")
WEIGHTS = ("global", "patch", "anatomy", "alignment", "reconstruction")


class Anatomy(SSLMethod):
    """Anatomy-aware contrast (module doc) on crops ``[N, 1, *S]`` with ``body`` ``[N, 3]``.

    Args:
        num_prototypes: K, logits of the DINO/iBOT head (shared by global and patch tokens).
        projection_dim, hidden_dim, projector_layers, projector_norm: the head's MLP.
        mask_ratio: share of last-map patches masked per view (at least one).
        ema_momentum: teacher EMA momentum at step 0, raised to 1 on a cosine over the
            trainer's ``estimated_stepping_batches`` (DINO; constant without a finite total).
        student_temperature, teacher_temperature, center_momentum: DINO/iBOT settings.
        warmup_teacher_temperature, teacher_temperature_warmup_steps: the teacher temperature
            rises linearly from the first to ``teacher_temperature`` over these steps (DINO).
        freeze_last_layer: steps during which the head's prototypes (``head.last``) get no
            update (DINO: their gradient is dropped, so early steps cannot collapse them).
        view_scale: range of the crop-volume fraction each view's box covers; each view is cut
            from its own random box of the crop and resized back (DINO's global crops);
            ``[1, 1]``: both views are the whole crop.
        tolerance, search_radius, use_prior, use_teacher_mining: of ``mine_positives``.
        global_weight, patch_weight, anatomy_weight, alignment_weight, reconstruction_weight:
            loss weights; 0 switches a term off (and leaves its module out).
        alignment_heads, alignment_layers: of the conditional alignment module.
        reconstruction_size: voxels per axis the decoder predicts per masked patch (the
            patch average-pooled to it where the stride is larger and divisible), so the
            decoder stays light for stride-32 backbones (8^3 = 512 outputs, not 32^3).
        refine_threshold: mean cosine a partner's best teacher match must reach to move it
            (batches with partner windows only: the data module's ``refine_margin``).
        refine_start_step: no refinement before this step (a young teacher misplaces matches).
        **kwargs: :class:`~medssl.methods.base.SSLMethod` arguments.
    """

    view_source = ViewSource.EITHER  # batch views, else the crop twice

    def __init__(
        self,
        num_prototypes: int = 4096,
        projection_dim: int = 256,
        hidden_dim: int = 2048,
        projector_layers: int = 3,
        projector_norm: Norm = "layer",
        mask_ratio: float = 0.4,
        ema_momentum: float = 0.996,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        center_momentum: float = 0.9,
        warmup_teacher_temperature: float = 0.04,
        teacher_temperature_warmup_steps: int = 0,
        freeze_last_layer: int = 0,
        view_scale: tuple[float, float] = (0.4, 1.0),
        tolerance: float = 0.1,
        search_radius: float = 0.2,
        use_prior: bool = True,
        use_teacher_mining: bool = True,
        global_weight: float = 1.0,
        patch_weight: float = 1.0,
        anatomy_weight: float = 1.0,
        alignment_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        alignment_heads: int = 4,
        alignment_layers: int = 1,
        reconstruction_size: int = 8,
        refine_threshold: float = 0.5,
        refine_start_step: int = 1000,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        weights = [self.hparams[f"{name}_weight"] for name in WEIGHTS]
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ValueError(f"loss weights must be >= 0 with at least one > 0, got {weights}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio}")
        if freeze_last_layer < 0 or teacher_temperature_warmup_steps < 0:
            raise ValueError(
                f"freeze_last_layer and teacher_temperature_warmup_steps must be >= 0, got "
                f"{freeze_last_layer} and {teacher_temperature_warmup_steps}"
            )
        if not 0.0 < view_scale[0] <= view_scale[1] <= 1.0:
            raise ValueError(f"view_scale must satisfy 0 < low <= high <= 1, got {view_scale}")
        distillation.warmup_teacher_temperature(
            0, warmup_teacher_temperature, teacher_temperature, 0
        )
        if reconstruction_size < 1:
            raise ValueError(f"reconstruction_size must be >= 1, got {reconstruction_size}")
        if not -1.0 <= refine_threshold <= 1.0 or refine_start_step < 0:
            raise ValueError(
                f"refine_threshold must lie in [-1, 1] and refine_start_step be >= 0, got "
                f"{refine_threshold} and {refine_start_step}"
            )
        if not (use_prior or use_teacher_mining):
            raise ValueError("mining needs use_prior, use_teacher_mining or both; got neither")
        dim = self.backbone.num_features
        self.head = DistillationHead(
            dim, hidden_dim, projection_dim, num_prototypes, projector_layers, projector_norm
        )
        self.alignment = (
            ConditionalAlignment(dim, alignment_heads, alignment_layers)
            if alignment_weight > 0
            else None
        )
        self.decoder: nn.Linear | None = None
        self.mask_token = nn.Parameter(torch.zeros(1))
        self.dino = DINOLoss(
            num_prototypes,
            student_temperature=student_temperature,
            teacher_temperature=teacher_temperature,
            center_momentum=center_momentum,
        )
        self.register_buffer("patch_center", torch.zeros(num_prototypes))
        self.teacher = nn.ModuleDict(
            {"backbone": copy.deepcopy(self.backbone), "head": copy.deepcopy(self.head)}
        )
        self.teacher.requires_grad_(False)
        if reconstruction_weight > 0:
            self._build_decoder(dim)

    def _build_decoder(self, dim: int) -> None:
        # sized now (not lazily on the first step) so every rank and a restored checkpoint
        # agree; the crop is checked against it in each step
        self.decoder = nn.Linear(dim, math.prod(self.target_patch(self.backbone_stride())))

    def target_patch(self, stride: tuple[int, ...]) -> tuple[int, ...]:
        """Voxels per axis of a reconstructed patch: ``reconstruction_size`` where it divides the stride."""
        r = self.hparams.reconstruction_size
        return tuple(r if s > r and s % r == 0 else s for s in stride)

    def backbone_stride(self) -> tuple[int, ...]:
        """Input voxels per last-map position along each axis, found from a probe input."""
        d = self.backbone.spatial_dims
        size = 64 if d == 3 else 128
        kwargs = self.hparams.backbone_kwargs or {}
        if "img_size" in kwargs:  # ViTs need their position grid
            img = kwargs["img_size"]
            probe = tuple(img) if isinstance(img, (list, tuple)) else (img,) * d
        else:
            probe = (size,) * d
        with torch.no_grad():
            grid = self.backbone.forward_features(torch.zeros(1, 1, *probe))[-1].shape[2:]
        return tuple(p // g for p, g in zip(probe, grid))

    # views and masks: keyed per (seed, step, batch, view, crop key), so a crop gets the same
    # mask and box wherever the batch was split (medssl.methods.masked_patches)
    def patch_masks(self, keys: Tensor, views: int, patches: int, batch_idx: int) -> Tensor:
        key = (self.hparams.seed, self.global_step, batch_idx)
        return keyed_patch_masks(key, keys, views, patches, self.hparams.mask_ratio)

    def cut_views(self, views: list[Tensor], keys: Tensor, batch_idx: int) -> Tensor:
        key = (self.hparams.seed, self.global_step, batch_idx)
        return keyed_view_boxes(key, views, keys, self.hparams.view_scale)

    def teacher_temperature(self) -> float:
        """This step's teacher temperature (DINO's linear warm-up)."""
        h = self.hparams
        return distillation.warmup_teacher_temperature(
            self.global_step, h.warmup_teacher_temperature, h.teacher_temperature,
            h.teacher_temperature_warmup_steps,
        )  # fmt: skip

    def encode(self, x: Tensor) -> Tensor:
        """``[M, 1, *S] -> [M, P, C]`` student tokens of the last feature map."""
        return self.backbone.forward_features(x)[-1].flatten(2).transpose(1, 2)

    def teacher_map(self, x: Tensor) -> Tensor:
        """``[M, 1, *S] -> [M, C, *g]``: the teacher's last feature map."""
        return self.teacher["backbone"].forward_features(x)[-1]

    def refine_partners(self, batch: dict) -> tuple[dict, dict[str, Tensor]]:
        """Partners moved to their anchors' teacher matches, then augmented; the log terms."""
        h = self.hparams
        return refined_batch(
            batch, self.teacher_map, h.refine_threshold, self.global_step >= h.refine_start_step,
            data_module_augment(self._trainer),
        )  # fmt: skip

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        h = self.hparams
        batch, refine_terms = self.refine_partners(batch)  # batches with partner windows only
        image = batch[BatchKey.IMAGE]  # [N, 1, *S]
        n, size = image.shape[0], tuple(image.shape[2:])
        views = batch.get(BatchKey.VIEWS) or [image, image]
        if len(views) < 2:
            raise ValueError(
                f"anatomy needs 2 views per crop (data.views: 0 or >= 2), got {len(views)}"
            )
        keys = batch[BatchKey.INDEX] if BatchKey.INDEX in batch else torch.arange(n) + rank() * n
        x = self.cut_views(list(views[:2]), keys, batch_idx)  # [2N, 1, *S], separate boxes
        body, groups = self.body_and_groups(batch, n)
        temperature = self.teacher_temperature()

        # teacher: tokens, global embeddings and logits of both unmasked views
        with torch.no_grad():
            t_map = self.teacher_map(x)
            t_tokens = t_map.flatten(2).transpose(1, 2)  # [2N, P, C]
            t_global = t_tokens.mean(dim=1)
            t_logits = self.teacher["head"](torch.cat([t_global, t_tokens.flatten(0, 1)]))
        grid = tuple(t_map.shape[2:])
        p = math.prod(grid)
        stride = self.check_stride(size, grid)
        t_global_logits, t_patch_logits = (
            t_logits[: 2 * n],
            t_logits[2 * n :].unflatten(0, (2 * n, p)),
        )

        # student: masked input patches (SimMIM), tokens, logits
        mask = self.patch_masks(keys, 2, p, batch_idx).to(x.device)  # [2N, P]
        voxel_mask = upsample_mask(mask, grid, stride).to(x.dtype)  # [2N, 1, *S]
        masked = x * (1 - voxel_mask) + self.mask_token.to(x.dtype) * voxel_mask
        s_tokens = self.encode(masked)  # [2N, P, C]
        s_logits = self.head(torch.cat([s_tokens.mean(dim=1), s_tokens.flatten(0, 1)]))
        s_global_logits, s_patch_logits = (
            s_logits[: 2 * n],
            s_logits[2 * n :].unflatten(0, (2 * n, p)),
        )

        # mining on the gathered global batch (teacher, no gradient)
        with torch.no_grad():
            pool = [gather_with_grad(t.contiguous()) for t in (t_global[:n], body, groups)]
            pool_logits = gather_with_grad(t_global_logits[n:].contiguous())  # view 2 of positives
            pool_tokens = gather_with_grad(t_tokens[:n].contiguous())
        with self.full_precision():
            index, keep = mine_positives(
                t_global[:n].float(), body, groups, pool[0].float(), pool[1], pool[2],
                tolerance=h.tolerance, search_radius=h.search_radius,
                use_prior=h.use_prior, use_teacher=h.use_teacher_mining,
            )  # fmt: skip

        # alignment from the positives' teacher tokens; voxels of masked patches (autocast on)
        completed = prediction = None
        if self.alignment is not None:
            completed = self.alignment(s_tokens[:n], pool_tokens[index].to(s_tokens.dtype))
        if self.decoder is not None:
            prediction = self.decoder(s_tokens)  # [2N, P, prod(stride)]

        with self.full_precision():
            zero = s_logits.float().sum() * 0.0
            terms = {"global": zero, "patch": zero, "anatomy": zero}
            terms["kept_pairs"] = keep.float().mean()
            if h.anatomy_weight > 0:
                terms["anatomy"] = matched_distillation_loss(
                    s_global_logits[:n].float(), pool_logits[index].float(), keep, self.dino.center,
                    student_temperature=h.student_temperature, teacher_temperature=temperature,
                )  # fmt: skip
            if h.global_weight > 0:
                terms["global"] = self.dino(
                    list(s_global_logits.float().split(n)),
                    list(t_global_logits.float().split(n)),
                    teacher_temperature=temperature,
                )
            if h.patch_weight > 0:
                terms["patch"] = ibot_patch_loss(
                    s_patch_logits.float(), t_patch_logits.float(), mask, self.patch_center,
                    student_temperature=h.student_temperature, teacher_temperature=temperature,
                )  # fmt: skip
                self.patch_center.copy_(
                    updated_center(self.patch_center, t_patch_logits, h.center_momentum)
                )
            if completed is not None:
                terms["alignment"] = masked_mean_term(
                    F.normalize(completed.float(), dim=-1),
                    F.normalize(t_tokens[:n].float(), dim=-1),
                    mask[:n] & keep[:, None],
                )
            if prediction is not None:
                target = normalize_patches(
                    pooled_patches(x.float(), grid, stride, self.target_patch(stride))
                )
                terms["reconstruction"] = masked_mean_term(prediction.float(), target, mask)
            terms["teacher_temperature"] = zero.detach() + temperature
            terms.update(refine_terms)
            terms["total"] = sum(
                getattr(h, f"{name}_weight") * terms[name] for name in WEIGHTS if name in terms
            )
        return self.finish_step(terms)

    def body_and_groups(self, batch: dict, n: int) -> tuple[Tensor, Tensor]:
        """``body [N, 3]`` (zeros without the key) and volume ids ``[N]`` (rows without the key)."""
        device = batch[BatchKey.IMAGE].device
        if BatchKey.BODY in batch:
            body = batch[BatchKey.BODY].to(device=device, dtype=torch.float32)
        else:
            if not getattr(self, "_warned_body", False):
                log.warning("batches carry no 'body' key: positives are mined by the teacher alone")
                self._warned_body = True
            body = torch.zeros(n, 3, device=device)
        if BatchKey.VOLUME in batch:
            groups = batch[BatchKey.VOLUME].to(device=device, dtype=torch.long)
        else:  # each crop its own volume, ids unique over ranks
            groups = torch.arange(n, device=device) + rank() * n
        if body.shape != (n, 3) or groups.shape != (n,):
            raise ValueError(
                f"batch 'body' must be [N, 3] and 'volume' [N] for N = {n} crops, got "
                f"{tuple(body.shape)} and {tuple(groups.shape)}"
            )
        return body, groups

    def check_stride(self, size: tuple[int, ...], grid: tuple[int, ...]) -> tuple[int, ...]:
        """Input voxels per last-map position (:func:`patch_stride`), checked against the decoder."""
        stride = patch_stride(size, grid)
        target = self.target_patch(stride)
        if self.decoder is not None and self.decoder.out_features != math.prod(target):
            raise ValueError(
                f"crop size {list(size)} gives patches of {list(target)} voxels to predict, the "
                f"decoder was built for {self.decoder.out_features} voxels per patch"
            )
        return stride

    def on_after_backward(self) -> None:
        if self.global_step < self.hparams.freeze_last_layer:  # DINO: prototypes held at first
            self.head.last.weight.grad = None

    def ema_momentum(self, step: int) -> float:
        """The teacher momentum after optimiser step ``step`` (cosine from ``ema_momentum`` to 1)."""
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        return distillation.teacher_momentum(step, float(total), self.hparams.ema_momentum)

    def after_optimizer_step(self) -> None:
        momentum = self.ema_momentum(self.global_step)
        ema_update(self.teacher["backbone"], self.backbone, momentum)
        ema_update(self.teacher["head"], self.head, momentum)
