"""Rebuild an artifact's encoder: ``create_backbone(name, **kwargs)`` + its weights, strictly.

``build_encoder(artifact)`` gives the artifact's backbone (for a joint 2D/3D artifact: the 2D
encoder); ``build_encoder(artifact, volume=True)`` gives the 3D
:class:`~medssl.backbones.slice_stack.SliceStackEncoder` (2D encoder + slice aggregator) of an
artifact that carries a slice aggregator.
"""

from __future__ import annotations

from medssl.backbones import Backbone, create_backbone
from medssl.backbones.slice_stack import SliceAggregator, SliceStackEncoder
from medssl.inference.artifact import AGGREGATOR, Artifact, ArtifactError


def build_encoder(artifact: Artifact, volume: bool = False, weights: bool = True) -> Backbone:
    """The artifact's backbone with its weights loaded (every key must match), in eval mode.

    ``volume``: wrap it with the artifact's slice aggregator into a 3D encoder
    (``ArtifactError`` when the artifact has none). ``weights=False``: the same architecture
    freshly initialised (a from-scratch baseline of exactly the artifact's shape).
    """
    try:
        encoder = create_backbone(artifact.backbone_name, **artifact.backbone_kwargs)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(
            f"artifact {artifact.path}: cannot build backbone {artifact.backbone_name!r}: {exc}"
        ) from None
    try:
        if weights:
            encoder.load_state_dict(artifact.backbone_state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(
            f"artifact {artifact.path}: weights do not fit backbone {artifact.backbone_name!r}: {' '.join(str(exc).split())[:300]}"
        ) from None
    if volume:
        return _slice_stack(artifact, encoder, weights).eval()
    return encoder.eval()


def _slice_stack(artifact: Artifact, encoder: Backbone, weights: bool) -> SliceStackEncoder:
    spec = artifact.aggregator
    if spec is None:
        raise ArtifactError(
            f"artifact {artifact.path}: no {AGGREGATOR}; only a joint 2D/3D export serves volumes through a 2D encoder"
        )
    spec = dict(spec)
    num_slices, slice_axis = spec.pop("num_slices", 16), spec.pop("slice_axis", 2)
    try:
        aggregator = SliceAggregator(**spec)
        if weights:
            aggregator.load_state_dict(artifact.aggregator_state, strict=True)
        return SliceStackEncoder(encoder, aggregator, num_slices, slice_axis)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ArtifactError(
            f"artifact {artifact.path}: cannot rebuild the {AGGREGATOR} ({spec}): {str(exc)[:300]}"
        ) from None
