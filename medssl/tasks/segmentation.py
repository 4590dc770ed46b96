"""Segmentation fine-tuning: the encoder's multi-scale features -> a U-Net/UNETR-style decoder.

Training: crops ``batch["image"] [B, 1, *crop]`` with labels ``batch["label"] [B, *crop]``;
Dice + cross-entropy, on every deep-supervision output when enabled. Validation: whole
preprocessed volumes, predicted by sliding window with Gaussian blending
(:func:`medssl.inference.sliding_window.sliding_window`), scored per structure with Dice, 95%
Hausdorff distance and normalised surface Dice (:mod:`medssl.metrics.segmentation`) at the
volume's spacing; logged as ``val/dice``, ``val/hd95``, ``val/nsd`` (means over structures
and volumes) and ``val/<structure>/dice`` etc.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from medssl.heads.seg_decoder import SegmentationDecoder
from medssl.inference.sliding_window import sliding_window, sliding_window_by_slice
from medssl.losses.segmentation import deep_supervision_loss
from medssl.metrics.segmentation import segmentation_metrics, summarise
from medssl.tasks.base import FinetuneTask
from medssl.types import BatchKey, HeadSpec, TaskKind


class Segmentation(FinetuneTask):
    """Encoder + :class:`~medssl.heads.seg_decoder.SegmentationDecoder`.

    Args:
        num_classes: outputs including background (linked from the data module).
        class_names: names of the ``num_classes`` outputs, background first (linked from the data module).
        decoder_channels: channels of each decoder stage (default: the decoder's own).
        deep_supervision: also supervise coarser decoder outputs.
        dice_weight, ce_weight: weights of the two loss terms.
        roi_size: sliding-window size at validation (default: the training crop size).
        sw_overlap, sw_batch_size: sliding-window overlap and windows per forward pass.
        nsd_tolerance_mm: tolerance of the normalised surface Dice.
        **kwargs: :class:`~medssl.tasks.base.FinetuneTask` arguments (encoder, freeze, lr, ...).
    """

    task = TaskKind.SEGMENTATION
    headline = "dice"

    def __init__(
        self,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        decoder_channels: list[int] | None = None,
        deep_supervision: bool = True,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        roi_size: list[int] | None = None,
        sw_overlap: float = 0.5,
        sw_batch_size: int = 2,
        nsd_tolerance_mm: float = 2.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"segmentation needs num_classes >= 2 (background + structures), got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names names all {num_classes} outputs, background first; got {len(class_names)}")
        values = self.hparams.class_values
        if values is not None and (len(values) != num_classes or values[0] != 0):
            raise ValueError(f"class_values gives each of the {num_classes} outputs its mask value, background 0 first; got {list(values)[:8]}")
        enc = self.encoder
        # the spec holds what the encoder does not say: build_head takes the rest from the encoder
        self.decoder_spec = {"num_classes": num_classes, "decoder_channels": decoder_channels, "deep_supervision": deep_supervision}
        self.heads["seg"] = SegmentationDecoder(
            list(enc.feature_channels), list(enc.feature_strides), enc.spatial_dims, enc.in_channels, **self.decoder_spec
        )
        self._val: list[dict] = []
        self.val_summary: dict[str, float] = {}

    def head_specs(self) -> dict[str, HeadSpec]:
        return {"seg": HeadSpec(TaskKind.SEGMENTATION, dict(self.decoder_spec))}

    def label_names(self) -> list[str]:
        return list(self.hparams.class_names or ["background", *(f"class_{i}" for i in range(1, self.hparams.num_classes))])

    def forward(self, image: Tensor) -> Tensor | list[Tensor]:
        return self.heads["seg"](self.encoder.forward_features(image), image)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        outputs = self(batch[BatchKey.IMAGE])
        hp = self.hparams
        loss = deep_supervision_loss(outputs, batch[BatchKey.LABEL], hp.dice_weight, hp.ce_weight)
        return self.finish_step({"total": loss})

    # validation: whole volumes ----------------------------------------------------------------
    def predict_volume(self, image: Tensor) -> Tensor:
        """Logits ``[1, K, *spatial]`` of a whole preprocessed volume ``[1, 1, *spatial]``.

        A 2D encoder on a volume ``[1, 1, X, Y, Z]`` (``--data.spatial_dims 2``) predicts it
        slice by slice along the last (axial) axis, as the data module cut its training slices.
        """
        roi = self.hparams.roi_size or list(self._roi_from_data(image))
        hp = self.hparams
        if self.encoder.spatial_dims == 2 and image.ndim == 5:
            return sliding_window_by_slice(self._predict_logits, image, list(roi)[:2], overlap=hp.sw_overlap, batch_size=hp.sw_batch_size)
        return sliding_window(self._predict_logits, image, roi, overlap=hp.sw_overlap, batch_size=hp.sw_batch_size)

    def _predict_logits(self, x: Tensor) -> Tensor:
        out = self(x)
        return out[0] if isinstance(out, (list, tuple)) else out

    def _roi_from_data(self, image: Tensor) -> tuple[int, ...]:
        datamodule = getattr(self.trainer, "datamodule", None)
        crop = getattr(datamodule, "crop_size", None)
        return tuple(crop) if crop else tuple(image.shape[2:])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.predict_volume(batch[BatchKey.IMAGE])
        pred = logits.argmax(dim=1)[0].cpu().numpy()
        truth = batch[BatchKey.LABEL][0].cpu().numpy()
        spacing = [float(s) for s in torch.as_tensor(batch[BatchKey.SPACING]).reshape(-1)[-truth.ndim :]]
        labels = list(range(1, self.hparams.num_classes))
        self._val.append(segmentation_metrics(pred, truth, labels, spacing, self.hparams.nsd_tolerance_mm))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        names = dict(enumerate(self.label_names()))
        summary = summarise(self._val, names)
        self._val = []
        # "mean/dice" -> "dice" (the headline), "liver/dice" stays per structure
        self.val_summary = {k.removeprefix("mean/"): float(v) for k, v in summary.items()}
        finite = {f"val/{k}": v for k, v in self.val_summary.items() if math.isfinite(v)}
        self.log_dict(finite, sync_dist=True)
