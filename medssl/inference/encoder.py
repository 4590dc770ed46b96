"""Rebuild an artifact's encoder: ``create_backbone(name, **kwargs)`` + its weights, strictly."""

from __future__ import annotations

from medssl.backbones import Backbone, create_backbone
from medssl.inference.artifact import Artifact, ArtifactError


def build_encoder(artifact: Artifact) -> Backbone:
    """The artifact's backbone with its weights loaded (every key must match), in eval mode."""
    try:
        encoder = create_backbone(artifact.backbone_name, **artifact.backbone_kwargs)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(
            f"artifact {artifact.path}: cannot build backbone {artifact.backbone_name!r}: {exc}"
        ) from None
    try:
        encoder.load_state_dict(artifact.backbone_state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(
            f"artifact {artifact.path}: weights do not fit backbone {artifact.backbone_name!r}: {str(exc)[:300]}"
        ) from None
    return encoder.eval()
