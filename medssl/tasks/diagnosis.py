"""Diagnosis fine-tuning aligned with guideline text, after RAD (Li et al., NeurIPS 2025,
"RAD: Towards Trustworthy Retrieval-Augmented Multi-modal Clinical Diagnosis", arXiv:2509.19980).

Each class's guideline sentences (``configs/guidelines/*.yaml``) are embedded once by a local
text encoder (bundled MiniLM by default, any local Hugging Face folder instead) and installed
in a :class:`~medssl.heads.guideline_decoder.GuidelineDecoder`, whose sentence queries attend
over the encoder's last feature map. The loss is cross-entropy (multi-class) or binary
cross-entropy (multi-label) on the logits plus ``guideline_weight`` times the guideline
contrastive loss (:func:`~medssl.losses.guideline.guideline_contrastive_loss`), which pulls
each image embedding to its classes' guideline prototypes and away from the others.

Validation logs ``val/accuracy``, ``val/auroc``, ``val/f1`` and ``val/zero_shot_accuracy``
(classification by similarity to guideline prototypes alone).
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medssl.heads.guideline_decoder import GuidelineDecoder
from medssl.losses.guideline import class_prototypes, guideline_contrastive_loss, zero_shot_logits
from medssl.metrics.classification import classification_metrics
from medssl.tasks.base import FinetuneTask
from medssl.text.encoder import TextEncoder, embed_guidelines
from medssl.text.knowledge_base import load_guidelines
from medssl.types import BatchKey, HeadSpec, TaskKind


def name_key(name: str) -> str:
    """``"Solid nodule"`` and ``"solid_nodule"`` name one class."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


class Diagnosis(FinetuneTask):
    """Encoder + guideline-query decoder; classification loss + guideline contrastive loss.

    Args:
        num_classes, class_names: the store's diagnosis vocabulary (linked from the data module);
            every class must have guideline text (names match ignoring case, spaces and hyphens).
        guidelines: the knowledge-base YAML.
        text_model: a local Hugging Face folder (default: the bundled all-MiniLM-L6-v2).
        text_cache: folder for cached sentence embeddings (default: none).
        multi_label: independent classes (sigmoid) instead of exclusive ones; None takes it
            from the data module.
        embed_dim, num_heads, num_layers: the decoder.
        guideline_weight: weight of the guideline contrastive loss.
        temperature: of the guideline contrastive loss.
        **kwargs: :class:`~medssl.tasks.base.FinetuneTask` arguments.
    """

    task = TaskKind.CLASSIFICATION

    def __init__(
        self,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        guidelines: str = "configs/guidelines/phantom_lesions.yaml",
        text_model: str | None = None,
        text_cache: str | None = None,
        multi_label: bool | None = None,
        embed_dim: int = 256,
        num_heads: int = 4,
        num_layers: int = 1,
        guideline_weight: float = 0.5,
        temperature: float = 0.07,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        names = list(class_names or [])
        if len(names) != num_classes or num_classes < 2:
            raise ValueError(f"diagnosis needs >= 2 named classes; got num_classes {num_classes} and names {names}")
        gset = load_guidelines(guidelines)
        known = {name_key(n): i for i, n in enumerate(gset.class_names)}
        missing = [n for n in names if name_key(n) not in known]
        if missing:
            raise ValueError(f"guidelines {guidelines}: no text for classes {missing}; it has {list(gset.class_names)}")
        to_task = {known[name_key(n)]: k for k, n in enumerate(names)}
        keep = [i for i, c in enumerate(gset.sentence_to_class) if int(c) in to_task]
        embeddings = embed_guidelines(gset, TextEncoder(text_model), text_cache)[keep]
        sentence_class = torch.tensor([to_task[int(gset.sentence_to_class[i])] for i in keep])
        self.guideline_texts = [gset.texts[i] for i in keep]
        self.guideline_sources = [gset.sentences[i].source for i in keep]
        self.guidelines_file = str(guidelines)
        feature_dim = self.encoder.feature_channels[-1]
        decoder = GuidelineDecoder(
            feature_dim, num_classes, int(embeddings.shape[1]), embed_dim, num_heads, num_layers,
            bool(multi_label), self.encoder.spatial_dims,
        )
        decoder.set_guidelines(embeddings, sentence_class)
        self.heads["dx"] = decoder
        self._val: list[tuple[Tensor, Tensor, Tensor]] = []
        self.val_summary: dict[str, float] = {}

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.hparams.multi_label is None and datamodule is not None:
            multi = bool(getattr(datamodule, "multi_label", False))
            self.heads["dx"].multi_label = multi
            self.heads["dx"]._spec["multi_label"] = multi

    @property
    def multi_label(self) -> bool:
        return self.heads["dx"].multi_label

    def head_specs(self) -> dict[str, HeadSpec]:
        return {"dx": HeadSpec(TaskKind.CLASSIFICATION, self.heads["dx"].spec())}

    def label_names(self) -> list[str]:
        return list(self.hparams.class_names)

    def checkpoint_extra(self) -> dict:
        return {"guidelines": {"file": self.guidelines_file, "texts": self.guideline_texts, "sources": self.guideline_sources, "sentence_class": self.heads["dx"].sentence_class.tolist()}}

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        return self.heads["dx"](self.encoder.forward_features(image)[-1])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self(batch[BatchKey.IMAGE])
        target = batch[BatchKey.TARGET]
        with torch.autocast(device_type=self.device.type, enabled=False):
            logits = out["logits"].float()
            if self.multi_label:
                cls = F.binary_cross_entropy_with_logits(logits, target.float())
            else:
                cls = F.cross_entropy(logits, target.long())
            guide = guideline_contrastive_loss(
                out["image_embedding"].float(), out["guideline_embedding"].float(),
                self.heads["dx"].sentence_class, target, self.hparams.temperature,
            )
        total = cls + self.hparams.guideline_weight * guide
        return self.finish_step({"total": total, "classification": cls, "guideline": guide})

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self(batch[BatchKey.IMAGE])
        logits = out["logits"].float()
        probs = logits.sigmoid() if self.multi_label else logits.softmax(dim=1)
        prototypes = class_prototypes(out["guideline_embedding"].float(), self.heads["dx"].sentence_class, self.hparams.num_classes)
        zero_shot = zero_shot_logits(out["image_embedding"].float(), prototypes)
        self._val.append((probs.cpu(), zero_shot.cpu(), batch[BatchKey.TARGET].cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        probs, zero_shot, targets = (torch.cat(parts).numpy() for parts in zip(*self._val))
        self._val = []
        summary = classification_metrics(probs, targets, self.multi_label)
        if self.multi_label:
            zs = classification_metrics(1 / (1 + np.exp(-zero_shot / 0.1)), targets, True)
        else:
            zs = classification_metrics(zero_shot, targets, False)
        summary["zero_shot_accuracy"] = zs["accuracy"]
        summary["zero_shot_auroc"] = zs["auroc"]
        self.val_summary = {k: float(v) for k, v in summary.items()}
        self.log_dict({f"val/{k}": v for k, v in self.val_summary.items() if math.isfinite(v)}, sync_dist=True)
