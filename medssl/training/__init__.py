"""Shared Lightning plumbing of pretraining (``medssl.methods``) and fine-tuning (``medssl.tasks``).

The non-finite guard, atomic and SIGTERM checkpoints, the learning-rate schedule, the
guarded module base and the LightningCLI both commands use. Nothing here knows a method or
a task.
"""

from __future__ import annotations

from medssl.training.guard import NonFiniteLossError
from medssl.training.module import GuardedModule, warmup_cosine

__all__ = ["GuardedModule", "NonFiniteLossError", "warmup_cosine"]
