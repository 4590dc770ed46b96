"""One step of a method on a fixed global batch, on 1 process or 2 DDP (gloo) processes.

    python tests/methods/ddp_run.py OUT DEVICES [CASE] [STRATEGY]

CASE is ``module:function`` naming ``function(devices) -> (LightningModule, LightningDataModule)``
whose data module gives each of ``devices`` ranks its share of the same global batch
(default: SimCLR on 8 synthetic crops, :func:`simclr_case`). Writes ``OUT/rank{r}.pt``: the rank's loss and every parameter's gradient as the optimiser
sees it (after DDP's all-reduce). STRATEGY ``ddp`` (default) or ``fsdp``
(:class:`~medssl.training.fsdp_cpu.CPUFSDPStrategy`, ``use_orig_params``: the gradients written are
the full ones, gathered from the shards). Run as a script: Lightning's DDP launcher re-executes it
for rank 1. ``main(..., strategy="ddp_fork")`` runs in the calling process instead and forks
the ranks from it (no new interpreter: the default suite's fast DDP check).
"""

from __future__ import annotations

import importlib
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.distributed.fsdp import FullyShardedDataParallel

from medssl.methods import SimCLR
from medssl.training.fsdp_cpu import CPUFSDPStrategy
from tests.methods.synthetic import TINY_BACKBONES, TINY_HEADS, SyntheticCrops

GLOBAL_BATCH = 8


class DumpFirstStep(Callback):
    def __init__(self, out: Path) -> None:
        self.out, self.loss = out, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.loss = float(outputs["loss"])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        model = trainer.strategy.model
        sharded = isinstance(model, FullyShardedDataParallel)
        with (
            FullyShardedDataParallel.summon_full_params(model, with_grads=True)
            if sharded
            else nullcontext()
        ):
            self.grads = {
                n: p.grad.detach().clone()
                for n, p in pl_module.named_parameters()
                if p.grad is not None
            }

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(
            {"loss": self.loss, "grads": self.grads}, self.out / f"rank{trainer.global_rank}.pt"
        )


def simclr_case(devices: int):
    model = SimCLR(
        backbone="resenc3d",
        backbone_kwargs=TINY_BACKBONES["resenc3d"],
        temperature=0.2,
        **TINY_HEADS,
    )
    data = SyntheticCrops(batch_size=GLOBAL_BATCH // devices, num_batches=devices, views=2)
    return model, data


def main(
    out: Path, devices: int, case: str = "tests.methods.ddp_run:simclr_case", strategy: str = "ddp"
) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    module, function = case.split(":")
    model, data = getattr(importlib.import_module(module), function)(devices)
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=make_strategy(strategy) if devices > 1 else "auto",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[DumpFirstStep(out)],
    )
    trainer.fit(model, datamodule=data)


def make_strategy(name: str):
    if name == "fsdp":
        return CPUFSDPStrategy(use_orig_params=True)  # original parameters: full gradients
    if name not in ("ddp", "ddp_fork"):
        raise ValueError(f"strategy '{name}': expected ddp, ddp_fork or fsdp")
    return name


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:5])
