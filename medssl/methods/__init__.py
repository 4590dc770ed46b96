"""Self-supervised pretraining methods: one LightningModule per file on a small shared base.

``METHODS`` maps a method's short name to its class (a plain dict for tests and tools; the
CLI selects a method by class path, ``model.class_path: medssl.methods.VoCo``).
"""

from __future__ import annotations

from medssl.methods.anatomy import Anatomy
from medssl.methods.base import NonFiniteLossError, SSLMethod, ema_update, warmup_cosine
from medssl.methods.joint2d3d import Joint2D3D
from medssl.methods.simclr import SimCLR
from medssl.methods.swav import SwAV
from medssl.methods.voco import VoCo

METHODS: dict[str, type[SSLMethod]] = {
    "voco": VoCo,
    "simclr": SimCLR,
    "swav": SwAV,
    "anatomy": Anatomy,
    "joint2d3d": Joint2D3D,
}

__all__ = [
    "METHODS",
    "Anatomy",
    "Joint2D3D",
    "NonFiniteLossError",
    "SSLMethod",
    "SimCLR",
    "SwAV",
    "VoCo",
    "ema_update",
    "warmup_cosine",
]
