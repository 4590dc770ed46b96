"""``medssl export``: a pretraining or fine-tuning checkpoint -> an artifact (model.safetensors + artifact.json).

Imports backbones, the store's plan and ``medssl.inference.artifact``; never lightning (a
checkpoint is read with ``torch.load(weights_only=True)``: plain tensors and primitives).
"""

from __future__ import annotations

from medssl.export.checkpoint import CheckpointContents, read_checkpoint

__all__ = ["CheckpointContents", "read_checkpoint"]
