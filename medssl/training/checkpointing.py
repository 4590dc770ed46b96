"""Checkpoints a killed run can trust: atomic writes, a checkpoint on SIGTERM, strict resume paths.

- :class:`AtomicCheckpointIO` writes every checkpoint to a temporary sibling, fsyncs and
  renames it into place, so a file at a checkpoint path is always complete (kill -9 at any
  instant leaves the previous checkpoint intact).
- :class:`SigtermCheckpoint`: when the process gets SIGTERM (a scheduler's pre-emption, or
  ``kill``), Lightning finishes the current batch and raises ``SIGTERMException``; this
  callback first writes ``<checkpoints>/sigterm-step=N.ckpt`` at the end of that batch, at
  the same point of the loop where ModelCheckpoint saves, so resuming from it continues
  exactly.
- :class:`TolerantCheckpoint`: Lightning's ModelCheckpoint (periodic, or the k best by a
  validation metric), except that a validation that yields no value of the monitored metric
  (an AUROC undefined on one class, say) ranks nothing instead of stopping the run.
- :func:`resolve_ckpt_path`: a resume path that does not exist is an error, never a silent
  fresh start.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from medssl.atomic import atomic_write_bytes
from medssl.errors import ConfigError

log = logging.getLogger("medssl.pretrain")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to memory, then temporary file + fsync + ``os.replace`` (medssl.atomic)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options, got {storage_options!r}"
            )
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, buffer.getvalue())


class TolerantCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that skips the ranking of a validation without the monitored metric.

    Tasks log only finite metrics, so ``val/auroc`` is missing after a validation whose cases
    are all of one class; Lightning's ModelCheckpoint then raises and ends the run, or, when
    an earlier validation logged it, ranks this checkpoint by that earlier value.
    """

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        if self.monitor is not None:  # only this validation's value may rank its checkpoint
            trainer.callback_metrics.pop(self.monitor, None)

    def _save_topk_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Any]) -> None:
        # the one place Lightning decides to raise; overriding it keeps the rest of its logic
        if self.monitor is not None and self.monitor not in monitor_candidates:
            log.warning("step %d: no %s to rank a checkpoint by (validation gave none)", trainer.global_step, self.monitor)
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)


class SigtermCheckpoint(Callback):
    """On SIGTERM, save ``sigterm-step=N.ckpt`` next to the run's other checkpoints before Lightning exits."""

    def __init__(self) -> None:
        self.saved: Path | None = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if self.saved is not None:
            return
        # every rank must agree: saving is collective, and so is Lightning's exit after it
        if not trainer.strategy.reduce_boolean_decision(bool(trainer.received_sigterm), all=False):
            return
        trainer._signal_connector.received_sigterm = True
        path = checkpoint_dir(trainer) / f"sigterm-step={trainer.global_step}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        self.saved = path
        log.warning("SIGTERM: checkpoint saved to %s; resume with --ckpt_path %s", path, path)


class FinalCheckpoint(Callback):
    """At the end of training, refresh ``last.ckpt`` when the final step was not a save step.

    ModelCheckpoint writes ``last.ckpt`` only when it saves (every N steps), so a run of 60
    steps saving every 50 would leave step 50 there; ``medssl export .../last.ckpt`` must see
    the weights training ended with.
    """

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for callback in trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
                last = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
                if callback._last_global_step_saved != trainer.global_step or not last.is_file():
                    trainer.save_checkpoint(last, weights_only=False)
                    callback._last_global_step_saved = trainer.global_step
                # Lightning's own on_train_end (runs after this) writes last-v1.ckpt beside a
                # last.ckpt it did not write itself; tell it this one is the last.
                callback.last_model_path = callback._last_checkpoint_saved = str(last)
                return


def checkpoint_dir(trainer: Trainer) -> Path:
    """Where the run's ModelCheckpoint writes (its dirpath), else ``<log_dir or root>/checkpoints``."""
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


def resolve_ckpt_path(ckpt_path: str | None) -> str | None:
    """The checkpoint to resume from, checked: None (fresh run) or an existing file."""
    if ckpt_path is None:
        return None
    path = Path(ckpt_path).expanduser()
    if str(ckpt_path) in ("last", "best", "hpc", "registry"):
        raise ConfigError(
            f"--ckpt_path {ckpt_path}: give the checkpoint file itself (e.g. RUN/checkpoints/last.ckpt)"
        )
    if not path.is_file():
        raise ConfigError(
            f"--ckpt_path {ckpt_path}: no such checkpoint file; refusing to start from scratch (drop --ckpt_path for a fresh run)"
        )
    return str(path)
