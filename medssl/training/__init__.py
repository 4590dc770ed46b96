"""Shared Lightning plumbing of pretraining (``medssl.methods``) and fine-tuning (``medssl.tasks``).

The non-finite guard (:mod:`guard`), atomic, SIGTERM and final checkpoints
(:mod:`checkpointing`), the guarded module base with AdamW and the warm-up/cosine schedule
(:mod:`module`), the LightningCLI both commands use (:mod:`cli`), FSDP on CPU processes
(:mod:`fsdp_cpu`) and the online kNN/linear probe of a backbone (:mod:`online_probe`, on a
:mod:`medssl.data.probe_set`). Nothing here knows a method or a task; tests/training/ runs it on a tiny
regression model.
"""

from __future__ import annotations

from medssl.training.guard import NonFiniteLossError
from medssl.training.module import GuardedModule, warmup_cosine

__all__ = ["GuardedModule", "NonFiniteLossError", "warmup_cosine"]
