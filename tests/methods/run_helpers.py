"""Callbacks the subprocess tests put into a pretraining run through its config (by class path)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from lightning.pytorch import Callback


class RecordLosses(Callback):
    """Appends ``{"step": global step after the batch, "loss": total}`` per batch to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with open(self.path, "a") as f:
            f.write(
                json.dumps({"step": trainer.global_step, "loss": float(outputs["loss"])}) + "\n"
            )
            f.flush()


class PauseAtStep(Callback):
    """Before the batch that would start step ``step + 1``: touch ``marker``, then sleep (to be killed)."""

    def __init__(self, step: int, marker: str, seconds: float = 600.0) -> None:
        self.step, self.marker, self.seconds = step, Path(marker), seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.marker.touch()
            time.sleep(self.seconds)


class SlowSteps(Callback):
    """Sleep after every batch (so a signal lands mid-run); touch ``marker`` once ``step`` is reached."""

    def __init__(self, step: int, marker: str, seconds: float = 0.3) -> None:
        self.step, self.marker, self.seconds = step, Path(marker), seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            self.marker.touch()
        time.sleep(self.seconds)


class CrashAtStep(Callback):
    """Before the batch that would start step ``step + 1``: raise, as a crashed process would stop."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"crash before step {self.step + 1} (test)")
