"""Heads on an encoder's multi-scale features: segmentation decoders, a detector, a diagnosis decoder.

:mod:`seg_decoder` (U-Net decoder over :mod:`pyramid`'s UNETR-style projections),
:mod:`detector` (RetinaNet with ATSS matching), :mod:`guideline_decoder` (guideline sentences
as queries: the diagnosis head). Torch, plus MONAI where a head is built from MONAI's parts:
``monai.apps.detection`` for the detector, ``monai.networks`` blocks for the decoders, in
those three modules only; never lightning or an I/O library (import contracts in
pyproject.toml). A head is built from a JSON spec (its constructor's keyword arguments), so
an artifact can rebuild it.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from medssl.heads.detector import (
    AtssRetinaNetDetector,
    BackboneFPN,
    build_retinanet,
    detector_from_spec,
    detector_spec,
)
from medssl.heads.pyramid import ScalePyramid, unetr_strides
from medssl.heads.seg_decoder import SegmentationDecoder
from medssl.types import TaskKind

# segmentation keywords that come from the encoder, never from the spec
ENCODER_KEYS = ("feature_channels", "feature_strides", "spatial_dims", "in_channels")


def build_head(kind: TaskKind | str, spec: dict[str, Any], encoder_info: nn.Module) -> nn.Module:
    """Build the head of ``kind`` from its JSON ``spec`` on the encoder ``encoder_info``.

    ``encoder_info`` is the encoder (a medssl backbone, or any module with its attributes
    ``feature_channels``, ``feature_strides``, ``spatial_dims``, ``in_channels``; detection also
    calls its ``forward_features``). Spec contract per kind (JSON primitives only):

    * "segmentation": keyword arguments of ``SegmentationDecoder`` other than the encoder's
      ``feature_channels`` / ``feature_strides`` / ``spatial_dims`` / ``in_channels`` (taken from
      ``encoder_info``; a spec that repeats them is refused): ``num_classes`` (required),
      ``decoder_channels``, ``deep_supervision``, ``norm``, ``residual``. Returns the decoder;
      call it as ``decoder(encoder.forward_features(x), x)``.
    * "detection": ``detector_spec(detector)``, i.e. ``build_retinanet``'s keyword arguments but
      the encoder. Returns a MONAI ``RetinaNetDetector`` that CONTAINS the encoder (its state dict
      carries the encoder weights under ``network.feature_extractor.encoder.``).
    * "classification": keyword arguments of ``medssl.heads.guideline_decoder.GuidelineDecoder``
      (``num_classes``, ``text_dim``, ``embed_dim``, ``num_heads``, ``num_layers``,
      ``multi_label``, ``dropout``); ``feature_dim`` defaults to the channels of the encoder's
      last feature map (the map the decoder reads) and ``spatial_dims`` to the encoder's. Guideline embeddings are buffers: load them with the
      state dict.

    Raises:
        ValueError: unknown ``kind``, or a spec that does not fit the head (named in the message).
    """
    if kind not in tuple(TaskKind):
        raise ValueError(f"unknown head kind {kind!r}; known: {', '.join(TaskKind)}")
    kind = TaskKind(kind)
    if not isinstance(spec, dict):
        raise TypeError(f"a {kind} head spec must be a dict, got {type(spec).__name__}")
    if kind is TaskKind.DETECTION:
        return detector_from_spec(encoder_info, spec)
    if kind is TaskKind.SEGMENTATION:
        repeated = sorted(set(spec) & set(ENCODER_KEYS))
        if repeated:
            raise ValueError(
                f"segmentation spec must not set {repeated}: they come from the encoder"
            )
        encoder_kwargs = {key: getattr(encoder_info, key) for key in ENCODER_KEYS}
        return _call(SegmentationDecoder, kind, {**encoder_kwargs, **spec})
    # lazy: the classification head lives in its own module, written separately
    from medssl.heads.guideline_decoder import GuidelineDecoder

    from_encoder = {
        "feature_dim": int(encoder_info.feature_channels[-1]),
        "spatial_dims": int(encoder_info.spatial_dims),
    }
    accepted = inspect.signature(GuidelineDecoder).parameters
    defaults = {key: value for key, value in from_encoder.items() if key in accepted}
    return _call(GuidelineDecoder, kind, {**defaults, **spec})


def _call(constructor: type[nn.Module], kind: str, kwargs: dict[str, Any]) -> nn.Module:
    """``constructor(**kwargs)`` after checking the keywords against its signature."""
    parameters = inspect.signature(constructor).parameters
    unknown = sorted(set(kwargs) - set(parameters))
    missing = [
        name for name, p in parameters.items() if p.default is p.empty and name not in kwargs
    ]
    if unknown or missing:
        raise ValueError(
            f"{kind} head spec does not fit {constructor.__name__}: unknown key(s) {unknown}, "
            f"missing key(s) {missing}; accepted: {', '.join(parameters)}"
        )
    return constructor(**kwargs)


__all__ = [
    "AtssRetinaNetDetector",
    "BackboneFPN",
    "ScalePyramid",
    "SegmentationDecoder",
    "build_head",
    "build_retinanet",
    "detector_from_spec",
    "detector_spec",
    "unetr_strides",
]
