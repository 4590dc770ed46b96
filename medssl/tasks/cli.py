"""``medssl finetune``: the shared LightningCLI (:mod:`medssl.training.cli`) over the fine-tuning tasks.

    medssl finetune -c configs/trainer/cpu.yaml -c configs/finetune/segmentation.yaml \\
        --model.encoder ARTIFACT --data.store STORE --trainer.max_steps 200

``--model.encoder`` names an artifact written by ``medssl export`` (leave it out to train
from scratch). The data module reads labels from the store; the number of outputs and their
names and mask values are linked from the data module into the task (``data.num_classes`` ->
``model.num_classes``, ``data.class_names`` -> ``model.class_names``, ``data.class_values``
-> ``model.class_values``), so a config never repeats them. The data module's ``task`` goes
the other way, from the model's class (its ``task`` attribute): a config names the task
once, by its class; a ``--data.task`` that contradicts the class is refused. After
training, the final weights are validated (:func:`final_validation`) and the metrics go
into ``last.ckpt``'s record. Then
``medssl export RUNS/<task>/<run>/checkpoints/last.ckpt --out ARTIFACT`` writes an artifact
with the heads, their label names and the plan.
"""

from __future__ import annotations

import importlib

from lightning.pytorch.cli import LightningArgumentParser

from medssl.tasks.base import FinetuneTask
from medssl.training.checkpointing import checkpoint_dir
from medssl.training.cli import MedsslCLI, fit_main
from medssl.training.cli import build_cli as _build

__all__ = ["FinetuneCLI", "build_cli", "data_task", "final_validation", "finetune_main"]


class FinetuneCLI(MedsslCLI):
    default_data = "medssl.data.finetune.FinetuneDataModule"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        # data.task defaults to "not given" here (not the signature's segmentation), so the
        # link can tell an explicit --data.task that contradicts the model from no --data.task
        parser.set_defaults({"data": {"class_path": self.default_data, "init_args": {"task": None}}})
        parser.link_arguments(("model.class_path", "data.init_args.task"), "data.init_args.task", compute_fn=data_task, apply_on="parse")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")
        parser.link_arguments("data.class_values", "model.init_args.class_values", apply_on="instantiate")


def data_task(class_path: str, given: str | None = None) -> str:
    """The data module's task: the ``task`` attribute of the model class at ``class_path``.

    Raises:
        ValueError: the class sets no task kind, or ``given`` (an explicit ``data.task``) is
            another kind than the class's.
    """
    module, _, name = class_path.rpartition(".")
    task = getattr(getattr(importlib.import_module(module), name), "task", None)
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
        trainer.save_checkpoint(last)
