"""The training progress bar: optimizer steps of ``max_steps`` with an ETA.

medssl runs are bounded by steps (the samplers are endless, ``--trainer.max_steps`` ends a
run), so Lightning's own bar reads "Epoch 0/-2" and counts batches of an epoch that never
ends. This bar counts ``global_step`` against ``max_steps`` (so a resumed run starts where it
stopped, and gradient accumulation does not inflate the count) and leaves out ``v_num``.
A run bounded by epochs only (``max_steps`` -1) gets Lightning's bar unchanged.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar

TRAIN_DESCRIPTION = "train"


class StepProgressBar(RichProgressBar):
    """``train ━━━━━━━━ 120/1000 0:01:02 • 0:07:40 1.9it/s loss: 0.41``."""

    def _by_steps(self) -> bool:
        return self.trainer.max_steps > 0

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._by_steps() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._by_steps():
            return super()._get_train_description(current_epoch)
        return f"{TRAIN_DESCRIPTION:{len(self.validation_description)}}"

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self._by_steps() and self.progress is not None and self.train_progress_bar_id is not None:
            # start at the step reached (a resumed run); reset also clears the speed samples
            self.progress.reset(self.train_progress_bar_id, total=trainer.max_steps, completed=trainer.global_step)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._by_steps():
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the run folder's name, not a metric
        return metrics
