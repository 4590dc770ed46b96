"""Encoders with one surface (DESIGN.md section 3), built only through ``create_backbone``.

Registered families (each with a ``spatial_dims`` twin): ``swin3d`` / ``swin2d`` (SwinUNETR /
VoCo Swin, sizes b/l/h, MONAI-compatible weights), ``vit3d`` / ``vit2d`` (sizes s/b/l),
``resenc3d`` / ``resenc2d`` (nnU-Net ResEnc encoder). Imports torch only.
"""

from __future__ import annotations

# importing the families registers them (the package is always imported before a submodule)
from medssl.backbones import resenc, swin, vit  # noqa: F401
from medssl.backbones.base import Backbone
from medssl.backbones.registry import (
    create_backbone,
    get_backbone_factory,
    list_backbones,
    register_backbone,
)

__all__ = [
    "Backbone",
    "create_backbone",
    "get_backbone_factory",
    "list_backbones",
    "register_backbone",
]
