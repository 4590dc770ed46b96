"""The shared base of every SSL method: optimiser and schedule, loss guard and logging, EMA, export.

A method subclasses :class:`SSLMethod` and writes one ``training_step`` that reads top to
bottom (make views, encode, project, loss) and ends with ``return self.finish_step(terms)``.
``finish_step`` stops the run with :class:`~medssl.training.guard.NonFiniteLossError` before
any backward pass or optimiser step when a loss term is NaN/Inf, and
``on_before_optimizer_step`` does the same for gradients (:mod:`medssl.training.guard`), so no
checkpoint written by the run ever holds non-finite weights.

Hyperparameters are primitives only (str, numbers, bools, lists, dicts of those), so a
checkpoint loads with ``torch.load(weights_only=True)``.

Each method declares ``view_source`` (:class:`~medssl.types.ViewSource`): whether it takes its
views from the data module (``data.views >= 1``), cuts its own from each crop (``data.views:
0``) or does either; ``setup`` checks it against the data module's ``views`` and raises
:class:`~medssl.errors.ConfigError` on a mismatch (:func:`check_view_source`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from medssl.backbones import create_backbone
from medssl.errors import ConfigError
from medssl.training import GuardedModule, NonFiniteLossError, warmup_cosine
from medssl.training.module import decay_groups
from medssl.transforms.rng import keyed_generator
from medssl.types import ViewSource

__all__ = ["NonFiniteLossError", "SSLMethod", "check_view_source", "ema_update", "warmup_cosine"]
CHECKPOINT_KEY = "medssl"  # what `medssl export` reads from a checkpoint (besides state_dict)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student`` for parameters; buffers copied.

    The two modules must have the same parameter and buffer lists (a teacher is a deepcopy).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must lie in [0, 1], got {momentum}")
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError(f"teacher has {len(t_params)} parameters, student {len(s_params)}")
    if t_params:
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(
            t_params,
            [p.detach().to(t.dtype) for t, p in zip(t_params, s_params)],
            alpha=1.0 - momentum,
        )
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        t_buf.copy_(s_buf)


class SSLMethod(GuardedModule):
    """Backbone + optimiser + guard; subclasses add heads and a ``training_step``.

    Args:
        backbone: a name of ``medssl.backbones.list_backbones()``.
        backbone_kwargs: keyword arguments of that backbone's factory.
        lr: peak AdamW learning rate (after warm-up).
        weight_decay: AdamW decay of weight matrices (biases and norms are not decayed).
        warmup_steps: optimiser steps of linear warm-up.
        min_lr_ratio: final learning rate of the cosine decay, as a fraction of ``lr``; the
            decay runs over the trainer's ``estimated_stepping_batches`` (``max_steps``).
        compile: ``torch.compile`` the backbone in place (parameter names unchanged).
        check_gradients: also stop on a non-finite gradient (skipped under fp16 loss scaling).
        seed: seeds the method's own sampling (crop positions, in-method views), drawn per step
            from ``(seed, step, batch index, rank)`` so a resumed run draws what an
            uninterrupted one would.
    """

    view_source: ClassVar[ViewSource]  # every method declares it (module doc)

    def __init__(
        self,
        backbone: str = "resenc3d",
        backbone_kwargs: dict | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.01,
        compile: bool = False,
        check_gradients: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = create_backbone(backbone, **(backbone_kwargs or {}))
        self._compiled = False

    # the step ---------------------------------------------------------------------------
    def step_generator(self, batch_idx: int) -> torch.Generator:
        """A CPU generator keyed by (seed, step, batch, rank) (:mod:`medssl.transforms.rng`)."""
        return keyed_generator(self.hparams.seed, self.global_step, batch_idx, self.global_rank)

    def full_precision(self) -> torch.autocast:
        """Autocast off: similarities, softmaxes and Sinkhorn run in float32 under bf16-mixed."""
        return torch.autocast(device_type=self.device.type, enabled=False)

    # setup, optimiser ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:  # a data module without a `views` setting makes none
            check_view_source(self, type(datamodule).__name__, getattr(datamodule, "views", 0))
        if self.hparams.compile and not self._compiled:
            self.backbone.compile()  # in place: state_dict keys stay "backbone.*"
            self._compiled = True

    def configure_optimizers(self):
        groups = decay_groups(self.named_parameters(), self.hparams.weight_decay, true_ndims=self.true_ndims)
        return self.adamw_with_schedule(groups, self.hparams.lr, self.hparams.warmup_steps, self.hparams.min_lr_ratio)

    # export -----------------------------------------------------------------------------
    def export_state(self) -> tuple[str, dict, dict[str, Tensor]]:
        """``(backbone name, backbone kwargs, backbone state_dict on CPU)``: what an artifact needs."""
        state = {k: v.detach().cpu().clone() for k, v in self.backbone.state_dict().items()}
        return self.hparams.backbone, dict(self.hparams.backbone_kwargs or {}), state

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        datamodule = (
            getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        )
        store = getattr(datamodule, "store", None)
        checkpoint[CHECKPOINT_KEY] = {
            "method": type(self).__name__,
            "backbone": self.hparams.backbone,
            "backbone_kwargs": dict(self.hparams.backbone_kwargs or {}),
            "backbone_prefix": "backbone.",
            "store": None if store is None else str(Path(store).resolve()),
        }


def check_view_source(method: SSLMethod, data_module: str, views: int) -> None:
    """ConfigError when ``method.view_source`` contradicts the data module's ``views`` setting."""
    name, source = type(method).__name__, ViewSource(method.view_source)
    if source is ViewSource.OWN and views > 0:
        raise ConfigError(
            f"{name} cuts its own views from each crop (view_source {source}), but {data_module} "
            f"makes data.views={views} views per crop that it would ignore: set data.views to 0"
        )
    if source is ViewSource.DATA_MODULE and views < 1:
        raise ConfigError(
            f"{name} takes its views from the data module (view_source {source}), but "
            f"{data_module} makes none (data.views={views}): set data.views to 2 or more"
        )
