"""Online evaluation during pretraining: kNN and linear-probe accuracy of the frozen backbone.

Every ``every_n_steps`` optimiser steps (and at the start and end of training) the callback
embeds a labelled held-out set of crops (:mod:`medssl.data.probe_set`) with the backbone
in eval mode and without gradient, splits it by source volume (even groups fit, odd groups
test), and logs

- ``probe/knn_acc``: cosine kNN (k <= 20, votes weighted by ``exp(cos / 0.07)``, as in
  Wu et al. 2018 "Unsupervised Feature Learning via Non-Parametric Instance Discrimination");
- ``probe/linear_acc``: multinomial logistic regression on standardised features, full-batch
  Adam for ``linear_steps`` steps;
- ``probe/chance``: the accuracy of always answering the most frequent training class.

Under FSDP (one root FSDP unit, as ``configs/trainer/fsdp*.yaml`` make) every rank gathers
the full parameters for the evaluation (``FullyShardedDataParallel.summon_full_params``, no
write-back) and embeds the probe set with the unsharded backbone; its memory is one full
copy of the model for that moment.

At the end of training it writes ``probe.csv`` and, when matplotlib is installed,
``probe.png`` into the run folder (``trainer.log_dir``).
"""

from __future__ import annotations

import csv
import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.distributed.fsdp import FullyShardedDataParallel

from medssl.data.probe_set import ProbeSet

log = logging.getLogger("medssl.probe")
FIELDS = ("step", "knn_acc", "linear_acc", "chance")


def knn_accuracy(
    train: Tensor,
    train_labels: Tensor,
    test: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Weighted cosine kNN accuracy; features ``[n, F]``, labels ``[n]`` int64."""
    k = max(1, min(k, train.shape[0]))
    sims = F.normalize(test.float(), dim=1) @ F.normalize(train.float(), dim=1).T  # [m, n]
    top, index = sims.topk(k, dim=1)
    classes = int(torch.cat([train_labels, test_labels]).max()) + 1
    votes = torch.zeros(test.shape[0], classes).scatter_add_(
        1, train_labels[index], (top / temperature).exp()
    )
    return float((votes.argmax(1) == test_labels).float().mean())


def linear_probe_accuracy(
    train: Tensor,
    train_labels: Tensor,
    test: Tensor,
    test_labels: Tensor,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
) -> float:
    """Logistic regression on standardised features (train statistics); test accuracy."""
    mean, std = train.mean(0), train.std(0).clamp(min=1e-6)
    x, xt = (train.float() - mean) / std, (test.float() - mean) / std
    classes = int(torch.cat([train_labels, test_labels]).max()) + 1
    with torch.enable_grad():
        layer = torch.nn.Linear(x.shape[1], classes)
        torch.nn.init.zeros_(layer.weight), torch.nn.init.zeros_(layer.bias)
        optimizer = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(layer(x), train_labels).backward()
            optimizer.step()
    with torch.no_grad():
        return float((layer(xt).argmax(1) == test_labels).float().mean())


def split_by_group(groups: Tensor) -> tuple[Tensor, Tensor]:
    """Boolean masks (fit, test): volumes alternate between the two; one volume: alternate crops."""
    ids = groups.unique()
    if len(ids) >= 2:
        rank = torch.searchsorted(ids, groups)
        fit = rank % 2 == 0
    else:
        fit = torch.arange(len(groups)) % 2 == 0
    return fit, ~fit


class OnlineProbe(Callback):
    """kNN + linear probe of the backbone on a labelled probe set (module doc).

    Args:
        path: a probe-set file (``ProbeSet.save``); None turns the probe off.
        every_n_steps: evaluate after every this many optimiser steps.
        k: neighbours of the kNN probe.
        linear_steps: optimiser steps of the linear probe.
        batch_size: crops embedded per forward pass.
    """

    def __init__(
        self,
        path: str | None = None,
        every_n_steps: int = 100,
        k: int = 20,
        linear_steps: int = 300,
        batch_size: int = 64,
    ) -> None:
        if every_n_steps < 1 or k < 1 or batch_size < 1:
            raise ValueError(
                f"every_n_steps, k, batch_size must be >= 1, got {every_n_steps}, {k}, {batch_size}"
            )
        self.path, self.every_n_steps, self.k, self.linear_steps, self.batch_size = (
            path,
            every_n_steps,
            k,
            linear_steps,
            batch_size,
        )
        self.probe_set: ProbeSet | None = ProbeSet.load(path) if path else None
        self.history: list[dict[str, float]] = []

    @torch.no_grad()
    def embed(self, backbone: torch.nn.Module, device: torch.device) -> Tensor:
        """``[M, num_features]`` float32 on the CPU, backbone in eval mode (its mode restored)."""
        was_training = backbone.training
        backbone.eval()
        try:
            chunks = [
                backbone(x.to(device)).float().cpu()
                for x in self.probe_set.images.split(self.batch_size)
            ]
        finally:
            backbone.train(was_training)
        return torch.cat(chunks)

    def evaluate(self, pl_module: LightningModule, step: int) -> dict[str, float]:
        features = self.embed(pl_module.backbone, pl_module.device)
        labels = self.probe_set.labels
        fit, test = split_by_group(self.probe_set.groups)
        args = (features[fit], labels[fit], features[test], labels[test])
        chance = float((labels[test] == labels[fit].mode().values).float().mean())
        row = {
            "step": step,
            "knn_acc": knn_accuracy(*args, k=self.k),
            "linear_acc": linear_probe_accuracy(*args, steps=self.linear_steps),
            "chance": chance,
        }
        self.history.append(row)
        return row

    def _run(self, trainer: Trainer, pl_module: LightningModule, log_now: bool) -> None:
        if self.probe_set is None or (
            self.history and self.history[-1]["step"] == trainer.global_step
        ):
            return
        with full_parameters(trainer):  # every rank: gathering parameters is a collective
            row = self.evaluate(pl_module, trainer.global_step)
        if log_now and trainer.is_global_zero:  # straight to the loggers: one row at this step
            for logger in trainer.loggers:
                logger.log_metrics(
                    {f"probe/{k}": v for k, v in row.items() if k != "step"},
                    step=trainer.global_step,
                )
        log.info(
            "step %d: probe kNN %.3f, linear %.3f (chance %.3f)",
            row["step"],
            row["knn_acc"],
            row["linear_acc"],
            row["chance"],
        )

    def state_dict(self) -> dict:  # a resumed run's probe.csv keeps the rows before the resume
        return {"history": [dict(row) for row in self.history]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [dict(row) for row in state_dict.get("history", [])]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._run(trainer, pl_module, log_now=False)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._run(trainer, pl_module, log_now=True)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._run(trainer, pl_module, log_now=False)
        # log_dir broadcasts from rank 0 under DDP/FSDP: every rank must ask for it
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        if self.history and trainer.is_global_zero:
            write_csv(self.history, folder / "probe.csv")
            plot_png(self.history, folder / "probe.png")


def full_parameters(trainer: Trainer) -> AbstractContextManager:
    """A context in which a sharded (FSDP) model holds its full parameters; else does nothing."""
    model = trainer.strategy.model
    if isinstance(model, FullyShardedDataParallel):
        return FullyShardedDataParallel.summon_full_params(model, writeback=False)
    return nullcontext()


def write_csv(history: list[dict[str, float]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(history)


def plot_png(history: list[dict[str, float]], path: Path) -> bool:
    """Accuracy against step; False (and a log line) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info(
            "matplotlib is not installed: %s not drawn (the numbers are in probe.csv)", path.name
        )
        return False
    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key in FIELDS[1:]:
        ax.plot(
            steps,
            [r[key] for r in history],
            marker="o",
            label=key,
            linestyle="--" if key == "chance" else "-",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
