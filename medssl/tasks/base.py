"""The shared base of fine-tuning tasks: an encoder (pretrained artifact or from scratch) plus heads.

A task subclasses :class:`FinetuneTask`, builds its heads into ``self.heads`` (an
``nn.ModuleDict``) and describes each in :meth:`head_specs` (a :class:`~medssl.types.HeadSpec`:
what an artifact needs to rebuild it); ``training_step`` reads top to bottom and ends with ``return self.finish_step(terms)``.

The encoder is trained fully (``freeze: none``), not at all (``all``: a linear/decoder probe),
or in its last ``trainable_layers`` layers only (``partial``); ``layer_decay < 1`` scales
the encoder's learning rate per layer (:mod:`medssl.tasks.layer_decay`) and
``encoder_lr_scale`` scales it as a whole. A frozen encoder also stays in eval mode, so its
norm statistics do not drift.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Literal, get_args

from torch import nn

from medssl.backbones import Backbone, create_backbone
from medssl.inference.artifact import load_artifact
from medssl.inference.encoder import build_encoder
from medssl.tasks.layer_decay import freeze_below, layer_ids, layer_scales, num_layers
from medssl.training import GuardedModule
from medssl.training.module import decays
from medssl.types import HeadSpec, TaskKind

log = logging.getLogger("medssl.finetune")
CHECKPOINT_KEY = "medssl"  # the record `medssl export` reads (the same key pretraining writes)
FreezeMode = Literal["none", "all", "partial"]  # which encoder layers stay frozen (class doc)
FREEZE_MODES = get_args(FreezeMode)


class FinetuneTask(GuardedModule, ABC):
    """Encoder + heads + optimiser with freezing and layer-wise decay.

    Args:
        encoder: an artifact folder (``medssl export``) whose encoder starts the task; None
            trains ``backbone`` from a random initialisation.
        backbone, backbone_kwargs: the encoder to build when ``encoder`` is None (ignored otherwise).
        freeze: ``none`` | ``all`` | ``partial`` (the last ``trainable_layers`` layers train).
        trainable_layers: layers trained under ``partial`` (counted from the deepest).
        layer_decay: per-layer learning-rate decay of the encoder, in (0, 1]; 1 turns it off.
        encoder_lr_scale: the encoder's learning rate relative to the heads'.
        lr, weight_decay, warmup_steps, min_lr_ratio: AdamW with warm-up and cosine decay.
        check_gradients: stop on a non-finite gradient too.
        seed: seeds the task's own sampling.
        class_values: the store masks' label value of each output, in output order (linked
            from the data module; recorded in the artifact so predict writes those values).
    """

    task: ClassVar[TaskKind]  # each task sets its kind
    headline: ClassVar[str]  # its validation metric that ranks checkpoints (``val/<headline>``, higher is better)

    def __init__(
        self,
        encoder: str | None = None,
        backbone: str = "resenc3d",
        backbone_kwargs: dict | None = None,
        freeze: FreezeMode = "none",
        trainable_layers: int = 1,
        layer_decay: float = 1.0,
        encoder_lr_scale: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.01,
        check_gradients: bool = True,
        seed: int = 0,
        class_values: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if freeze not in FREEZE_MODES:
            raise ValueError(f"freeze '{freeze}': expected one of {', '.join(FREEZE_MODES)}")
        if class_values is not None and len(set(class_values)) != len(class_values):
            raise ValueError(f"class_values {list(class_values)[:8]}: each label value once")
        self.encoder_source = None
        if encoder is not None:
            artifact = load_artifact(encoder)
            self.encoder: Backbone = build_encoder(artifact).train()
            self.backbone_name, self.backbone_kwargs = artifact.backbone_name, artifact.backbone_kwargs
            self.encoder_source = {"artifact_weights_sha256": artifact.meta["weights_sha256"], "method": (artifact.meta.get("extra") or {}).get("source", {}).get("method")}
        else:
            self.encoder = create_backbone(backbone, **(backbone_kwargs or {}))
            self.backbone_name, self.backbone_kwargs = backbone, dict(backbone_kwargs or {})
        ids = layer_ids(self.encoder)
        if freeze == "all":
            freeze_below(self.encoder, num_layers(ids))
        elif freeze == "partial":
            freeze_below(self.encoder, max(0, num_layers(ids) - trainable_layers))
        self.heads = nn.ModuleDict()

    # what subclasses provide ------------------------------------------------------------------
    @abstractmethod
    def head_specs(self) -> dict[str, HeadSpec]:
        """``{head name: HeadSpec}`` for every head in ``self.heads``."""

    def label_names(self) -> list[str] | None:
        """Names of the outputs (classes or structures), in output order; recorded in the artifact."""
        return None

    def label_values(self) -> list[int] | None:
        """The masks' label value of each of :meth:`label_names`, or None (values = indices)."""
        values = self.hparams.get("class_values")
        names = self.label_names()
        if values is None or names is None or len(values) != len(names):
            return None
        return [int(v) for v in values]

    def checkpoint_extra(self) -> dict:
        """Plain JSON a task adds to its artifact's ``extra`` (e.g. guideline texts)."""
        return {}

    # training plumbing --------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.freeze == "all":
            self.encoder.eval()
        return self

    def configure_optimizers(self):
        hp = self.hparams
        ids = layer_ids(self.encoder)
        scales = layer_scales(ids, ids, hp.layer_decay)
        groups: dict[tuple[float, bool], list] = {}
        for name, p in self.encoder.named_parameters():
            if p.requires_grad:
                groups.setdefault((hp.encoder_lr_scale * scales[name], decays(f"encoder.{name}", p, self.true_ndims)), []).append(p)
        in_encoder = {id(p) for p in self.encoder.parameters()}
        for name, p in self.heads.named_parameters():  # a detector holds the encoder itself: count it once
            if p.requires_grad and id(p) not in in_encoder:
                groups.setdefault((1.0, decays(f"heads.{name}", p, self.true_ndims)), []).append(p)
        param_groups = [
            {"params": params, "lr_scale": scale, "weight_decay": hp.weight_decay if decayed else 0.0}
            for (scale, decayed), params in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1]))
        ]
        return self.adamw_with_schedule(param_groups, hp.lr, hp.warmup_steps, hp.min_lr_ratio)

    def trainable_fraction(self) -> float:
        """Share of the encoder's parameters that train (1.0 unless frozen)."""
        total = sum(p.numel() for p in self.encoder.parameters())
        return sum(p.numel() for p in self.encoder.parameters() if p.requires_grad) / max(total, 1)

    # export -------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        store = getattr(datamodule, "store", None)
        modalities = getattr(datamodule, "modalities", None) or None  # those of the cases it trained on
        heads = {  # plain str and JSON: the record loads with torch.load(weights_only=True)
            name: {"kind": str(spec.kind), "spec": dict(spec.kwargs), "prefix": f"heads.{name}."}
            for name, spec in self.head_specs().items()
        }
        checkpoint[CHECKPOINT_KEY] = {
            "method": type(self).__name__,
            "task": str(self.task),
            "backbone": self.backbone_name,
            "backbone_kwargs": dict(self.backbone_kwargs),
            "backbone_prefix": "encoder.",
            "heads": heads,
            "labels": self.label_names(),
            "label_values": self.label_values(),
            "modalities": None if modalities is None else list(modalities),
            "encoder_source": self.encoder_source,
            "extra": self.checkpoint_extra(),
            "store": None if store is None else str(Path(store).resolve()),
            "metrics": self.validation_record(),
        }

    def on_validation_end(self) -> None:
        if not self.trainer.sanity_checking:  # the sanity check runs untrained weights on 2 batches
            self.val_summary_step = int(self.global_step)

    def validation_record(self) -> dict[str, float | int]:
        """The last full validation's metrics and the step it ran at (empty: none ran yet);
        what the checkpoint and then the artifact record (plain numbers, NaN left out)."""
        step = getattr(self, "val_summary_step", None)
        summary = getattr(self, "val_summary", None) or {}
        if step is None or not summary:
            return {}
        return {"step": step, **{f"val/{k}": float(v) for k, v in summary.items() if math.isfinite(float(v))}}

