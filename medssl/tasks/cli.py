"""``medssl finetune``: the shared LightningCLI (:mod:`medssl.training.cli`) over the fine-tuning tasks.

    medssl finetune -c configs/trainer/cpu.yaml -c configs/finetune/segmentation.yaml \\
        --model.encoder ARTIFACT --data.store STORE --trainer.max_steps 200

``--model.encoder`` names an artifact written by ``medssl export`` (leave it out to train
from scratch). The data module reads labels from the store; the number of outputs and their
names and mask values are linked from the data module into the task (``data.num_classes`` ->
``model.num_classes``, ``data.class_names`` -> ``model.class_names``, ``data.class_values``
-> ``model.class_values``), so a config never repeats them. The data module's ``task`` goes
the other way, from the model's class (its ``task`` attribute): a config names the task
once, by its class; a ``--data.task`` that contradicts the class is refused.

Validation runs every ``--trainer.val_check_interval`` batches (default 1000), and each one
may save a checkpoint: the ``--checkpoint.save_top_k`` (default 3) best by the task's
headline metric (``val/dice``, ``val/froc_cpm``, ``val/auroc``; ``--checkpoint.monitor``
names another) are kept, as ``step=N-dice=0.8123.ckpt``, plus ``last.ckpt``. A config that
sets ``--checkpoint.every_n_train_steps`` gets periodic checkpoints instead, all kept. After
training, the final weights are validated (:func:`final_validation`) and the metrics go
into ``last.ckpt``'s record. Then
``medssl export RUNS/<task>/<run>/checkpoints/last.ckpt --out ARTIFACT`` writes an artifact
with the heads, their label names and the plan.
"""

from __future__ import annotations

import importlib

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser

from medssl.tasks.base import FinetuneTask
from medssl.tasks.workload import FINETUNE_MEMORY
from medssl.training.checkpointing import checkpoint_dir
from medssl.training.cli import MedsslCLI, fit_main
from medssl.training.cli import build_cli as _build

__all__ = ["FinetuneCLI", "build_cli", "data_task", "final_validation", "finetune_main", "rank_checkpoints"]
FINETUNE_DEFAULTS = {
    "trainer.val_check_interval": 1000,  # batches: validate, then rank a checkpoint
    "checkpoint.every_n_train_steps": None,  # save at validation, when the metric is fresh
    "checkpoint.save_top_k": 3,
}


class FinetuneCLI(MedsslCLI):
    default_data = "medssl.data.finetune.FinetuneDataModule"
    memory_plan = FINETUNE_MEMORY

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.set_defaults(FINETUNE_DEFAULTS)
        # data.task defaults to "not given" here (not the signature's segmentation), so the
        # link can tell an explicit --data.task that contradicts the model from no --data.task
        parser.set_defaults({"data": {"class_path": self.default_data, "init_args": {"task": None}}})
        parser.link_arguments(("model.class_path", "data.init_args.task"), "data.init_args.task", compute_fn=data_task, apply_on="parse")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")
        parser.link_arguments("data.class_values", "model.init_args.class_values", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        rank_checkpoints(self.config.checkpoint, self.config.model.class_path)


def rank_checkpoints(checkpoint: Namespace, class_path: str) -> None:
    """Rank ``checkpoint`` (the parsed ``--checkpoint.*`` group) by the task's headline metric
    ``val/<headline>``, highest first, with the score in the file name; unless it monitors a
    metric already, or saves every N steps (then each save is kept: a metric logged at
    validation would be stale at those steps)."""
    if checkpoint.monitor is not None:
        return
    if checkpoint.every_n_train_steps:
        checkpoint.save_top_k = -1 if checkpoint.save_top_k > 1 else checkpoint.save_top_k
        return
    headline = getattr(_task_class(class_path), "headline", None)
    if headline is None:  # a task without a headline metric: every validation's checkpoint
        checkpoint.save_top_k = -1
        return
    checkpoint.monitor, checkpoint.mode = f"val/{headline}", "max"
    checkpoint.filename = f"{checkpoint.filename or 'step={step}'}-{headline}={{val/{headline}:.4f}}"


def _task_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def data_task(class_path: str, given: str | None = None) -> str:
    """The data module's task: the ``task`` attribute of the model class at ``class_path``.

    Raises:
        ValueError: the class sets no task kind, or ``given`` (an explicit ``data.task``) is
            another kind than the class's.
    """
    task = getattr(_task_class(class_path), "task", None)
    if task is None:
        raise ValueError(f"model {class_path}: sets no task kind (a FinetuneTask subclass sets its `task` attribute)")
    if given is not None and given != task:
        raise ValueError(f"data.task {given!r} contradicts the model {class_path} (a {task} task); leave data.task out: it follows the model")
    return str(task)


def build_cli(argv: list[str]) -> FinetuneCLI:
    """Parse ``argv`` and instantiate task, data and trainer (nothing runs yet)."""
    return _build(FinetuneCLI, FinetuneTask, argv, "medssl finetune", "Fine-tune segmentation, detection or diagnosis heads on an encoder (LightningCLI; every option is also a flag).")


def finetune_main(argv: list[str]) -> int:
    """``medssl finetune ARGS``: train, validate the final weights; returns 0, or 143 after a
    SIGTERM checkpoint."""
    return fit_main(build_cli, argv, "fine-tuning", after_fit=final_validation)


def final_validation(cli: FinetuneCLI) -> None:
    """Validate the weights training ended with, unless the last validation ran at that step
    or the run has no validation cases (or ``limit_val_batches`` 0), then refresh
    ``last.ckpt`` so its record holds the metrics (``medssl export`` copies them into the
    artifact; ``val/*`` rows also land in the run's ``metrics.csv``)."""
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    if not getattr(data, "val_cases", None) or trainer.global_step == 0 or trainer.limit_val_batches == 0:
        return
    if getattr(model, "val_summary_step", None) != trainer.global_step:
        trainer.validate(model, datamodule=data, verbose=False)
    last = checkpoint_dir(trainer) / "last.ckpt"
    if last.is_file():
        trainer.save_checkpoint(last, weights_only=False)
