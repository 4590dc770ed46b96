"""Detection fine-tuning: a 3D RetinaNet (MONAI's detection components) on the encoder's pyramid.

Training: crops ``batch["image"] [B, 1, *crop]`` with ``batch["targets"]`` (per crop
``{"boxes": [N, 6] voxel corners, "labels": [N]}``); MONAI's detector returns the focal
classification loss and the box-regression loss, summed here. Validation: whole
preprocessed volumes (padded to the detector's size divisor), boxes scored against the
truth with mAP at IoU 0.1 / 0.25 / 0.5 and FROC (sensitivity at 1/8 ... 8 false positives per
volume; ``froc_cpm`` is their mean, LUNA16's CPM) from :mod:`medssl.metrics.detection`.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from medssl.heads.detector import build_retinanet, detector_spec
from medssl.metrics.detection import Detections, froc, mean_average_precision
from medssl.tasks.base import FinetuneTask
from medssl.types import BatchKey, HeadSpec, TaskKind


class Detection(FinetuneTask):
    """Encoder + RetinaNet.

    Args:
        num_classes, class_names: foreground box classes (linked from the data module).
        returned_levels: encoder maps fed to the FPN (default: those at strides 4, 8, 16, or the
            three deepest).
        anchor_shapes: base anchor sizes in voxels at the finest returned level.
        fpn_channels: FPN width (a multiple of 8).
        samples_per_image, positive_fraction, min_negatives: the anchors each image puts in the
            classification loss (MONAI's hard-negative sampler: at most ``positive_fraction`` of
            them positive, at least ``min_negatives`` of the hardest negatives, also in an image
            without boxes).
        score_threshold, nms_iou_threshold, detections_per_image: the box selector.
        froc_iou: IoU a detection needs to count as a hit in the FROC.
        **kwargs: :class:`~medssl.tasks.base.FinetuneTask` arguments.
    """

    task = TaskKind.DETECTION
    headline = "froc_cpm"

    def __init__(
        self,
        num_classes: int = 1,
        class_names: list[str] | None = None,
        returned_levels: list[int] | None = None,
        anchor_shapes: list[list[float]] | None = None,
        fpn_channels: int = 64,
        samples_per_image: int = 64,
        positive_fraction: float = 0.3,
        min_negatives: int = 16,
        score_threshold: float = 0.05,
        nms_iou_threshold: float = 0.22,
        detections_per_image: int = 100,
        froc_iou: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"detection needs num_classes >= 1 box classes, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names names the {num_classes} box classes; got {len(class_names)}")
        if self.hparams.class_values is not None and len(self.hparams.class_values) != num_classes:
            raise ValueError(f"class_values gives each of the {num_classes} box classes its mask value; got {len(self.hparams.class_values)}")
        strides = list(self.encoder.feature_strides)
        if returned_levels is None:
            returned_levels = [i for i, s in enumerate(strides) if s in (4, 8, 16)] or list(range(len(strides)))[-3:]
        dims = self.encoder.spatial_dims
        anchors = anchor_shapes or [[6.0] * dims, [10.0] * dims, [14.0] * dims]
        self.heads["det"] = build_retinanet(
            self.encoder, dims, num_classes, returned_levels, anchors, out_channels=fpn_channels,
            samples_per_image=samples_per_image, positive_fraction=positive_fraction, min_negatives=min_negatives,
            score_threshold=score_threshold, nms_iou_threshold=nms_iou_threshold,
            detections_per_image=detections_per_image,
        )
        self._preds: list[Detections] = []
        self._truths: list[Detections] = []
        self.val_summary: dict[str, float] = {}

    def head_specs(self) -> dict[str, HeadSpec]:
        return {"det": HeadSpec(TaskKind.DETECTION, detector_spec(self.heads["det"]))}

    def label_names(self) -> list[str]:
        return list(self.hparams.class_names or [f"class_{i}" for i in range(self.hparams.num_classes)])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        images, targets = self._pad(batch[BatchKey.IMAGE]), batch[BatchKey.TARGETS]
        losses = self.heads["det"](images, targets)
        terms = {k: v for k, v in losses.items()}
        terms["total"] = sum(losses.values())
        return self.finish_step(terms)

    def _pad(self, images: Tensor) -> Tensor:
        """Pad at the far end of each axis to the detector's size divisor (boxes are unaffected)."""
        divisor = int(self.heads["det"].network.feature_extractor.size_divisible)
        pad = []
        for size in reversed(images.shape[2:]):
            pad += [0, (-size) % divisor]
        return F.pad(images, pad) if any(pad) else images

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        detector = self.heads["det"]
        outputs = detector(self._pad(batch[BatchKey.IMAGE]))
        for out, target in zip(outputs, batch[BatchKey.TARGETS]):
            self._preds.append(Detections(out["boxes"].float().cpu().numpy(), out["labels"].cpu().numpy(), out["labels_scores"].float().cpu().numpy()))
            self._truths.append(Detections(target[BatchKey.BOXES].float().cpu().numpy(), target[BatchKey.LABELS].cpu().numpy()))

    def on_validation_epoch_end(self) -> None:
        if not self._truths:
            return
        summary = mean_average_precision(self._preds, self._truths)
        curve = froc(self._preds, self._truths, iou_threshold=self.hparams.froc_iou)
        summary["froc_cpm"] = curve.cpm
        for rate, sensitivity in zip(curve.fp_rates, curve.sensitivities):
            summary[f"sensitivity@{rate:g}fp"] = sensitivity
        self._preds, self._truths = [], []
        self.val_summary = {k: float(v) for k, v in summary.items()}
        self.log_dict({f"val/{k}": v for k, v in self.val_summary.items() if math.isfinite(v)}, sync_dist=True)


__all__ = ["Detection"]
