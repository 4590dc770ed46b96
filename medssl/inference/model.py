"""An artifact's encoder and heads, rebuilt for inference: :class:`InferenceModel`.

The encoder comes from ``build_encoder`` (``create_backbone`` + strict loading); each head
of :attr:`Artifact.heads` (a :class:`~medssl.types.HeadSpec` per name) from
``medssl.heads.build_head(kind, kwargs, encoder)`` (its spec contract per kind) with its weights
(``heads.<name>.``) loaded strictly. Kinds (:class:`~medssl.types.TaskKind`): segmentation (a
U-Net decoder over ``forward_features``), detection (a RetinaNet that holds the encoder),
classification (a guideline-query decoder over the last feature map). Everything fails as
:class:`ArtifactError` naming the artifact, the head and the reason.

Before anything is allocated the whole model is built once on the ``meta`` device: a shape
in ``artifact.json`` that differs from the weights (12,000 channels, 5e7 classes) fails
there, and the parameters, and one window of the plan's crop, are checked against the
memory budget (:mod:`medssl.inference.artifact_guard`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from medssl.backbones import Backbone
from medssl.heads import ENCODER_KEYS, build_head
from medssl.inference.artifact import Artifact, ArtifactError
from medssl.inference.artifact_guard import check_crop, check_model_bytes, tensor_bytes
from medssl.inference.encoder import build_encoder
from medssl.memory import device_budget
from medssl.memory.budget import resident_bytes
from medssl.types import HeadSpec, OutputClass, TaskKind


def _segmentation_spec(spec: dict[str, Any], encoder: Backbone, where: str) -> dict[str, Any]:
    """The spec without the encoder's own keys: ``build_head`` takes those from the encoder.

    Older exports repeat them; they are dropped where they agree with the encoder, refused
    where they do not (the decoder would not fit the weights)."""
    out = dict(spec)
    for key in ENCODER_KEYS:
        if key in out:
            value = out.pop(key)
            own = getattr(encoder, key)
            if (list(value) if isinstance(value, (list, tuple)) else value) != (
                list(own) if isinstance(own, (list, tuple)) else own
            ):
                raise ArtifactError(f"{where}: spec {key}={value!r} differs from the encoder's {own!r}")
    return out


class InferenceModel(nn.Module):
    """Encoder + named heads in eval mode on one device.

    Attributes: ``encoder``; ``heads`` (``nn.ModuleDict``); ``specs`` (head name ->
    :class:`~medssl.types.HeadSpec`, without the encoder's own keys); ``kinds`` (head name ->
    kind); ``device``.
    """

    def __init__(self, encoder: Backbone, heads: dict[str, nn.Module], specs: dict[str, HeadSpec]) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)
        self.specs = dict(specs)
        self.meta: dict[str, Any] = {}

    @property
    def kinds(self) -> dict[str, TaskKind]:
        """Head name -> kind."""
        return {name: spec.kind for name, spec in self.specs.items()}

    @classmethod
    def from_artifact(cls, artifact: Artifact, device: torch.device | str = "cpu") -> InferenceModel:
        """Rebuild encoder and heads from ``artifact``; ``ArtifactError`` if it has no head."""
        if not artifact.heads:
            raise ArtifactError(
                f"artifact {artifact.path}: a pretrained encoder only; fine-tune a head first "
                "(medssl finetune), then export again"
            )
        _dry_run(cls, artifact, torch.device(device))
        model = cls(*_assemble(artifact))
        model.meta = dict(artifact.meta)
        for name in model.names(TaskKind.SEGMENTATION):
            if model.output_classes(name)[0].value != 0:
                raise ArtifactError(f"artifact {artifact.path}: head {name!r}: label_values must give background (class 0) the value 0")
        model.to(torch.device(device))
        return model.eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def names(self, kind: TaskKind) -> list[str]:
        """Names of the heads of ``kind``, sorted."""
        return sorted(n for n, k in self.kinds.items() if k == kind)

    def num_classes(self, name: str) -> int:
        return self.specs[name].num_classes

    def class_names(self, name: str) -> list[str]:
        """Output names of head ``name``: segmentation ``[background, structures...]``, detection
        and classification one per class; from the guidelines or ``labels``, else ``class_i``."""
        kind, count = self.kinds[name], self.num_classes(name)
        labels = list(self.meta.get("labels") or [])
        if kind is TaskKind.CLASSIFICATION:
            guidelines = _guidelines(self.meta, name)
            classes = guidelines.get("classes") if isinstance(guidelines, dict) else None
            if isinstance(classes, list) and len(classes) == count:
                return [str(c.get("name", f"class_{i}")) for i, c in enumerate(classes)]
        if kind is TaskKind.DETECTION and len(labels) == count + 1 and labels[0] == "background":
            labels = labels[1:]
        if len(labels) == count:
            return [str(v) for v in labels]
        first = ["background"] if kind is TaskKind.SEGMENTATION else []
        return first + [f"class_{i}" for i in range(len(first), count)]

    def output_classes(self, name: str) -> list[OutputClass]:
        """Head ``name``'s outputs in class order, each with its name and the label value of the
        training masks (artifact ``label_values``); the class index where the artifact records
        no values (older artifacts) or they do not fit the head (classification has none)."""
        names = self.class_names(name)
        values = list(self.meta.get("label_values") or [])
        labels = list(self.meta.get("labels") or [])
        if self.kinds[name] is TaskKind.DETECTION and len(values) == len(names) + 1 and labels[:1] == ["background"]:
            values = values[1:]
        if self.kinds[name] is TaskKind.CLASSIFICATION or len(values) != len(names):
            values = list(range(len(names)))
        return [OutputClass(i, int(v), n) for i, (v, n) in enumerate(zip(values, names))]

    def guideline_texts(self, name: str) -> list[str] | None:
        """Guideline sentence texts of classification head ``name`` in sentence order (the
        head's ``sentence_class`` order), or ``None`` when the artifact does not carry them."""
        guidelines = _guidelines(self.meta, name)
        if isinstance(guidelines, list) and all(isinstance(t, str) for t in guidelines):
            return list(guidelines)
        if isinstance(guidelines, dict) and isinstance(guidelines.get("texts"), list):  # medssl export
            return [str(t) for t in guidelines["texts"]]
        if isinstance(guidelines, dict) and isinstance(guidelines.get("classes"), list):
            return [
                str(s.get("text", "")) for c in guidelines["classes"]
                for s in (c.get("sentences") or [])
            ]
        return None

    def segmenter(self, name: str) -> Callable[[Tensor], Tensor]:
        """Windows ``[n, C, *roi]`` -> logits ``[n, K, *roi]`` of segmentation head ``name``."""
        head = self.heads[name]

        def logits(x: Tensor) -> Tensor:
            out = head(self.encoder.forward_features(x), x)
            return out[0] if isinstance(out, (list, tuple)) else out

        return logits

    def detect(self, name: str, image: Tensor) -> list[dict[str, Tensor]]:
        """Detector ``name`` on ``image [B, C, *S]``: per image ``boxes [M, 6]`` (voxel edges of
        ``image``), ``labels [M]``, ``labels_scores [M]``."""
        detector = self.heads[name]
        use_inferer = self.specs[name].kwargs.get("sliding_window_roi") is not None
        return detector(image, use_inferer=use_inferer)

    def classify(self, name: str, image: Tensor) -> dict[str, Tensor]:
        """Classification head ``name`` on the encoder's last map of ``image [B, C, *S]``:
        ``logits [B, K]``, ``sentence_scores [B, N]``, ``attention [B, N, *S/stride]``..."""
        return self.heads[name](self.encoder.forward_features(image)[-1])


def _guidelines(meta: dict[str, Any], head: str) -> Any:
    """The guideline record (YAML layout dict, or a list of texts) for ``head``: looked up in
    ``meta["guidelines"]`` then ``meta["extra"]["guidelines"]``, either direct or by head name."""
    for record in (meta.get("guidelines"), (meta.get("extra") or {}).get("guidelines")):
        if isinstance(record, dict) and "classes" not in record and head in record:
            record = record[head]
        if record:
            return record
    return None


__all__ = ["InferenceModel"]


def _assemble(artifact: Artifact) -> tuple[Backbone, dict[str, nn.Module], dict[str, HeadSpec]]:
    """Encoder and heads with their weights loaded strictly (on the current default device)."""
    encoder = build_encoder(artifact)
    heads, specs = {}, {}
    for name, spec in sorted(artifact.heads.items()):
        kind = spec.kind
        where = f"artifact {artifact.path}: head {name!r}"
        if kind is TaskKind.SEGMENTATION:
            spec = HeadSpec(kind, _segmentation_spec(spec.kwargs, encoder, where))
        try:
            head = build_head(kind, spec.kwargs, encoder)
        except (TypeError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{where}: cannot build {kind} head: {exc}") from None
        try:
            head.load_state_dict(artifact.head_state(name), strict=True)
        except RuntimeError as exc:
            raise ArtifactError(f"{where}: weights do not fit {kind} head: {' '.join(str(exc).split())[:300]}") from None
        heads[name], specs[name] = head, spec
    return encoder, heads, specs


def _dry_run(cls: type[InferenceModel], artifact: Artifact, device: torch.device) -> None:
    """Build the model on ``meta`` (shapes checked against the weights, nothing allocated), then
    check its size and one window of the plan's crop against ``device``'s memory budget."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "copying ... to a meta parameter is a no-op"
            model = cls(*_assemble(artifact))
    except ArtifactError:
        raise
    except (TypeError, ValueError, KeyError, RecursionError, OverflowError, MemoryError) as exc:
        raise ArtifactError(f"artifact {artifact.path}: cannot build its model ({type(exc).__name__}: {str(exc)[:200]})") from None
    needed = tensor_bytes([*model.parameters(), *model.buffers()])
    budget = device_budget(device)
    try:
        check_model_bytes(needed, budget, resident_bytes() if device.type == "cpu" else 0)
        plan = artifact.plan
        if plan is not None:
            classes = max((model.num_classes(n) for n in model.specs), default=1)
            check_crop(list(plan.crop_size), classes, budget)
    except ValueError as exc:
        raise ArtifactError(f"artifact {artifact.path}: {exc}") from None
