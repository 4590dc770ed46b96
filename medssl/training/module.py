"""The guarded LightningModule both pretraining methods and fine-tuning tasks stand on.

``finish_step(terms)`` checks every loss term is finite (on every rank) before any backward
pass, logs the terms and returns ``terms["total"]``; ``on_before_optimizer_step`` checks
gradients the same way (:mod:`medssl.training.guard`), so no checkpoint a run writes ever
holds non-finite weights. ``adamw_with_schedule`` is AdamW with linear warm-up and cosine
decay over the trainer's ``estimated_stepping_batches``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from medssl.errors import ConfigError
from medssl.training.guard import check_gradients, check_loss_terms

WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")  # what FSDP and activation checkpointing insert
FLAT_PARAMETER = "_flat_param"


def warmup_cosine(step: int, warmup_steps: int, total_steps: float, min_ratio: float) -> float:
    """Learning-rate multiplier: linear 0 -> 1 over ``warmup_steps``, cosine 1 -> ``min_ratio`` to ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if not math.isfinite(total_steps) or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class GuardedModule(LightningModule):
    """A LightningModule with the non-finite guard, term logging and AdamW + warm-up/cosine.

    Subclasses save ``check_gradients: bool`` among their hyperparameters (the gradient check
    is skipped under fp16 loss scaling, which expects an inf now and then and skips that step).
    """

    def finish_step(self, terms: dict[str, Tensor], prefix: str = "train") -> Tensor:
        """Check every term is finite, log them all under ``prefix/``, return ``terms["total"]``."""
        check_loss_terms(terms, self.global_step)
        self.log_dict({f"{prefix}/{k}": v.detach() for k, v in terms.items()}, on_step=True)
        self.log("loss", terms["total"].detach(), on_step=True, prog_bar=True, logger=False)
        return terms["total"]

    def configure_model(self) -> None:
        """Lightning calls this before a strategy wraps the model: remember every parameter's
        rank while it is still its own tensor (FSDP hands ``configure_optimizers`` 1-D shards)."""
        self._true_ndims = {name: p.ndim for name, p in self.named_parameters()}

    @property
    def true_ndims(self) -> dict[str, int]:
        """Parameter name -> its rank before any wrapping (empty before ``configure_model``)."""
        return getattr(self, "_true_ndims", {})

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.hparams.get("check_gradients", True) and not str(self.trainer.precision).startswith("16"):
            grads = [(n, p.grad) for n, p in self.named_parameters() if p.grad is not None]
            check_gradients(grads, self.global_step)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.after_optimizer_step()

    def after_optimizer_step(self) -> None:
        """Runs after each real optimiser step (not after accumulation micro-batches): EMA, renorms."""

    def adamw_with_schedule(
        self,
        groups: Sequence[dict],
        lr: float,
        warmup_steps: int,
        min_lr_ratio: float,
    ) -> dict:
        """AdamW over parameter ``groups`` (each may carry its own ``lr_scale`` and ``weight_decay``)
        with a per-step warm-up/cosine schedule; the value ``configure_optimizers`` returns."""
        param_groups = [
            {**{k: v for k, v in g.items() if k != "lr_scale"}, "lr": lr * g.get("lr_scale", 1.0)}
            for g in groups
            if g["params"]
        ]
        optimizer = torch.optim.AdamW(param_groups, lr=lr)
        total = float(self.trainer.estimated_stepping_batches) if self._trainer is not None else math.inf
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup_steps, total, min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def unwrapped_name(name: str) -> str:
    """A parameter's name as the unwrapped model spells it."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def decays(name: str, p: torch.Tensor, true_ndims: Mapping[str, int] | None = None) -> bool:
    """Whether weight decay applies: weight matrices and kernels do, biases and norm scales
    (1-D) do not, judged by the rank the parameter had before FSDP sharded it (``true_ndims``)."""
    if FLAT_PARAMETER in name:
        raise ConfigError(
            f"parameter '{name}': FSDP with use_orig_params=False flattens weights and biases into one "
            "tensor, so weight decay and per-layer learning rates cannot be told apart; set the "
            "strategy's use_orig_params: true (Lightning's FSDPStrategy default)"
        )
    return (true_ndims or {}).get(unwrapped_name(name), p.ndim) >= 2


def decay_groups(named_params, weight_decay: float, lr_scale: float = 1.0, true_ndims: Mapping[str, int] | None = None) -> list[dict]:
    """Split trainable parameters: weight matrices decay, biases and norms do not (:func:`decays`)."""
    decay, no_decay = [], []
    for name, p in named_params:
        if p.requires_grad:
            (decay if decays(name, p, true_ndims) else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": lr_scale},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": lr_scale},
    ]
