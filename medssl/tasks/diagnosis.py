"""Diagnosis fine-tuning aligned with guideline text, after RAD (Li et al., NeurIPS 2025,
"RAD: Towards Trustworthy Retrieval-Augmented Multi-modal Clinical Diagnosis", arXiv:2509.19980).

Each class's guideline sentences (``configs/guidelines/*.yaml``) are embedded once by a local
text encoder (bundled MiniLM by default, any local Hugging Face folder instead) and installed
in a :class:`~medssl.heads.guideline_decoder.GuidelineDecoder`, whose label queries and
guideline-sentence queries attend over the encoder's last feature map (RAD's dual decoder).
The loss, as in the reference, is the classification loss of each path on its own
(cross-entropy, or binary cross-entropy when multi-label; plus one on the summed logits when
the linear bypass is on) plus ``guideline_weight`` times the guideline loss between the
pooled image embedding and the class guideline prototypes: ``guideline_loss="rad"`` is the
reference's BCE over the positives and sampled negatives
(:func:`~medssl.losses.guideline.guideline_bce_loss`, T = 2.0, weight 0.1, 5 negatives per
positive, the defaults here); ``"prototype"`` is medssl's earlier softmax over all class
prototypes (:func:`~medssl.losses.guideline.prototype_softmax_loss`, used with T = 0.07,
weight 0.5).

Validation logs ``val/accuracy``, ``val/auroc``, ``val/f1`` (the prediction),
``val/label_path_accuracy`` and ``val/guideline_path_accuracy`` (each decoder path alone), and
``val/guideline_match_accuracy`` / ``val/guideline_match_auroc``: classification by the
cosine of the pooled image embedding to each class's guideline prototype. This is not
zero-shot: the image projection is trained on the labels through the guideline loss.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from medssl.heads.guideline_decoder import GuidelineDecoder
from medssl.losses.guideline import (
    class_prototypes,
    guideline_bce_loss,
    prototype_logits,
    prototype_softmax_loss,
)
from medssl.metrics.classification import classification_metrics
from medssl.tasks.base import FinetuneTask
from medssl.text.encoder import TextEncoder, embed_guidelines
from medssl.text.knowledge_base import load_guidelines
from medssl.types import BatchKey, HeadSpec, TaskKind


def name_key(name: str) -> str:
    """``"Solid nodule"`` and ``"solid_nodule"`` name one class."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


class Diagnosis(FinetuneTask):
    """Encoder + dual (label / guideline) query decoder; per-path classification loss +
    guideline loss.

    Args:
        num_classes, class_names: the store's diagnosis vocabulary (linked from the data module);
            every class must have guideline text (names match ignoring case, spaces and hyphens).
        guidelines: the knowledge-base YAML.
        text_model: a local Hugging Face folder (default: the bundled all-MiniLM-L6-v2).
        text_cache: folder for cached sentence embeddings (default: none).
        multi_label: independent classes (sigmoid) instead of exclusive ones; None takes it
            from the data module.
        embed_dim, num_heads, num_layers: the decoder.
        guideline_loss: "rad" (the reference's BCE over positives and sampled negatives) or
            "prototype" (softmax over all class prototypes).
        guideline_weight: weight of the guideline loss (reference: 0.1).
        temperature: of the guideline loss (reference: 2.0 for the image side).
        negatives_per_positive: negatives drawn per positive class by the "rad" loss.
        linear_bypass: add a linear map of the pooled features to the logits (off: every
            logit comes from a decoder query; on: its share is reported with the evidence).
        **kwargs: :class:`~medssl.tasks.base.FinetuneTask` arguments.
    """

    task = TaskKind.CLASSIFICATION
    headline = "auroc"

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
        guideline_loss: Literal["rad", "prototype"] = "rad",
        guideline_weight: float = 0.1,
        temperature: float = 2.0,
        negatives_per_positive: int = 5,
        linear_bypass: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if guideline_loss not in ("rad", "prototype"):
            raise ValueError(f"guideline_loss must be 'rad' or 'prototype', got {guideline_loss!r}")
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
            bool(multi_label), self.encoder.spatial_dims, linear_bypass=linear_bypass,
        )
        decoder.set_guidelines(embeddings, sentence_class)
        self.heads["dx"] = decoder
        self._val: list[tuple[Tensor, ...]] = []
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

    def _classification_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return F.cross_entropy(logits.float(), target.long())

    def _guideline_loss(self, image_embedding: Tensor, guideline_embedding: Tensor, target: Tensor) -> Tensor:
        args = (image_embedding.float(), guideline_embedding.float(), self.heads["dx"].sentence_class, target,
                self.hparams.temperature)
        if self.hparams.guideline_loss == "rad":
            return guideline_bce_loss(*args, self.hparams.negatives_per_positive, self.hparams.num_classes)
        return prototype_softmax_loss(*args, self.hparams.num_classes)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self(batch[BatchKey.IMAGE])
        target = batch[BatchKey.TARGET]
        with torch.autocast(device_type=self.device.type, enabled=False):
            terms = {
                "classification_label": self._classification_loss(out["label_logits"], target),
                "classification_guideline": self._classification_loss(out["guideline_logits"], target),
            }
            if "bypass_logits" in out:  # the bypass learns only through the summed logits
                terms["classification_fused"] = self._classification_loss(out["logits"], target)
            cls = sum(terms.values())
            guide = self._guideline_loss(out["image_embedding"], out["guideline_embedding"], target)
        total = cls + self.hparams.guideline_weight * guide
        return self.finish_step({"total": total, "classification": cls, **terms, "guideline": guide})

    def _probabilities(self, logits: Tensor) -> Tensor:
        logits = logits.float()
        return logits.sigmoid() if self.multi_label else logits.softmax(dim=1)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self(batch[BatchKey.IMAGE])
        prototypes = class_prototypes(out["guideline_embedding"].float(), self.heads["dx"].sentence_class,
                                      self.hparams.num_classes)
        match = prototype_logits(out["image_embedding"].float(), prototypes, self.hparams.temperature)
        self._val.append(tuple(part.cpu() for part in (
            self._probabilities(out["logits"]), self._probabilities(out["label_logits"]),
            self._probabilities(out["guideline_logits"]), self._probabilities(match), batch[BatchKey.TARGET],
        )))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        probs, label_path, guideline_path, match, targets = (torch.cat(parts).numpy() for parts in zip(*self._val))
        self._val = []
        summary = classification_metrics(probs, targets, self.multi_label)
        summary["label_path_accuracy"] = classification_metrics(label_path, targets, self.multi_label)["accuracy"]
        summary["guideline_path_accuracy"] = classification_metrics(guideline_path, targets, self.multi_label)["accuracy"]
        matched = classification_metrics(match, targets, self.multi_label)
        summary["guideline_match_accuracy"] = matched["accuracy"]
        summary["guideline_match_auroc"] = matched["auroc"]
        self.val_summary = {k: float(v) for k, v in summary.items()}
        self.log_dict({f"val/{k}": v for k, v in self.val_summary.items() if math.isfinite(v)}, sync_dist=True)
