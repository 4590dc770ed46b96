"""A tiny regression model on :class:`~medssl.training.GuardedModule` and its data.

The plumbing in ``medssl.training`` knows no method or task; these stand in for both so its
tests do not depend on ``medssl.methods`` or ``medssl.tasks``.
"""

from __future__ import annotations

import signal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from medssl.training.module import GuardedModule, decay_groups


class TinyRegression(GuardedModule):
    """``y ≈ net(x)`` for ``x: [N, 4]``; terms ``mse`` and ``total``; AdamW with warm-up/cosine."""

    def __init__(
        self,
        lr: float = 0.05,
        warmup_steps: int = 2,
        min_lr_ratio: float = 0.1,
        weight_decay: float = 0.01,
        check_gradients: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
        self.optimizer_steps = 0

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        mse = F.mse_loss(self.net(x), y)
        return self.finish_step({"mse": mse, "total": mse})

    def configure_optimizers(self) -> dict:
        h = self.hparams
        groups = decay_groups(self.named_parameters(), h.weight_decay, true_ndims=self.true_ndims)
        return self.adamw_with_schedule(groups, h.lr, h.warmup_steps, h.min_lr_ratio)

    def after_optimizer_step(self) -> None:
        self.optimizer_steps += 1


class TinyData(LightningDataModule):
    """``num_batches`` fixed batches of ``y = x @ w`` (the same in every run).

    ``ranks > 1``: each rank's loader holds its contiguous share of every global batch, in
    order (run the trainer with ``use_distributed_sampler=False``), so the ranks together see
    exactly what one process sees.
    """

    def __init__(self, batch_size: int = 4, num_batches: int = 4, ranks: int = 1) -> None:
        super().__init__()
        if batch_size % ranks:
            raise ValueError(f"batch_size {batch_size} does not split over {ranks} ranks")
        g = torch.Generator().manual_seed(0)
        n = batch_size * num_batches
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.randn(4, 1, generator=g)
        self.batch_size, self.num_batches, self.ranks = batch_size, num_batches, ranks

    def train_dataloader(self) -> DataLoader:
        data = TensorDataset(self.x, self.y)
        if self.ranks == 1:
            return DataLoader(data, batch_size=self.batch_size, shuffle=False)
        share = self.batch_size // self.ranks
        first = self.trainer.global_rank * share
        mine = [
            b * self.batch_size + first + j for b in range(self.num_batches) for j in range(share)
        ]
        return DataLoader(Subset(data, mine), batch_size=share, shuffle=False)


class TinyScored(TinyRegression):
    """TinyRegression whose k-th validation logs ``val/score = scores[k]`` (nothing for None),
    so a test knows which checkpoints rank best."""

    def __init__(self, scores: list[float | None], **kwargs) -> None:
        super().__init__(**kwargs)
        self.scores, self.validations = list(scores), 0

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        score = self.scores[self.validations]
        self.validations += 1
        if score is not None:
            self.log("val/score", score)


class TinyValData(TinyData):
    """TinyData with one validation batch."""

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[:4], self.y[:4]), batch_size=4)


def quiet_trainer(**kwargs) -> Trainer:
    """A CPU Trainer without logger, progress bar or summary (``kwargs`` win)."""
    args = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        **kwargs,
    }
    return Trainer(**args)


class SigtermBeforeStep(Callback):
    """Send this process SIGTERM at the start of the batch that makes step ``step + 1``
    (in-process, so only while Lightning's handler is installed)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
                raise RuntimeError(
                    "no SIGTERM handler installed: the signal would end the test process"
                )
            signal.raise_signal(signal.SIGTERM)
