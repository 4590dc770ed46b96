"""The LightningCLI behind ``medssl pretrain`` and ``medssl finetune``.

Besides the Trainer, model and data groups it adds:

- ``--checkpoint.*``: the ModelCheckpoint (default: every 1000 steps, all kept, plus ``last.ckpt``;
  fine-tuning keeps the best k by the task's validation metric instead, :mod:`medssl.tasks.cli`);
- ``--ckpt_path FILE``: resume from that checkpoint; a missing file is an error; a checkpoint of
  ``RUNS/<model>/<run>/checkpoints`` continues that run folder;
- ``--run_name NAME``: the run folder ``RUNS/<model>/<NAME>`` (default: the next ``version_N``);
  a folder that holds a run is refused unless the command resumes it (``--resume`` continues
  from its ``last.ckpt``); a resumed run appends to ``metrics.csv`` (:mod:`~medssl.training.run_folder`);
- ``--tracking csv|tensorboard|mlflow``: ``metrics.csv`` always, plus TensorBoard or MLflow
  (:mod:`medssl.training.tracking`).

``--help-all`` is LightningCLI's ``--help`` (every option); the ``medssl`` command answers a
plain ``--help`` with the main options without building this parser (:mod:`medssl.cli`).
The progress bar counts steps of ``max_steps`` (:mod:`~medssl.training.progress_bar`), and
library warnings a user cannot act on are filtered (:mod:`~medssl.training.quiet`).

Checkpoints are written atomically; SIGTERM writes ``checkpoints/sigterm-step=N.ckpt`` after
the current batch and the command exits with status 143. ``--trainer.precision bf16-mixed``
needs a GPU: on a CPU it falls back to ``32-true`` with a warning.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from medssl.memory import BUDGET_ENV
from medssl.training.checkpointing import (
    AtomicCheckpointIO,
    FinalCheckpoint,
    SigtermCheckpoint,
    TolerantCheckpoint,
    resolve_ckpt_path,
)
from medssl.training.memory_check import MemoryPlan, check_memory
from medssl.training.progress_bar import StepProgressBar
from medssl.training.quiet import quiet_lightning
from medssl.training.run_folder import RunStart, plan_run, run_name_of
from medssl.training.tracking import Tracking, check_tracking, run_loggers

log = logging.getLogger("medssl.train")
SIGTERM_EXIT = 143  # 128 + SIGTERM: the run stopped early, on purpose, with a checkpoint
CHECKPOINT_DEFAULTS = {
    "checkpoint.every_n_train_steps": 1000,
    "checkpoint.save_top_k": -1,
    "checkpoint.save_last": True,
    "checkpoint.filename": "step={step}",
    "checkpoint.auto_insert_metric_name": False,
}
HELP_ALL = "--help-all"  # LightningCLI's full --help (a plain --help is the short one of medssl.cli)
MIXED = ("bf16-mixed", "16-mixed", "bf16", "16", "bf16-true", "16-true")


class MedsslCLI(LightningCLI):
    """LightningCLI with checkpoint group, resume path, run name and CPU-safe precision.

    ``default_data`` (a class path) is the data module used when a config names none;
    ``extra_groups`` adds ``(callback class, group name)`` pairs (e.g. the online probe).
    """

    default_data: str = ""
    extra_groups: tuple[tuple[type, str], ...] = ()
    memory_plan: MemoryPlan | None = None  # the memory check's planner (medssl.training.memory_check); None: no check
    run_start: RunStart | None = None  # fresh, or the checkpoint to resume from (before_instantiate_classes)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # ``args`` is what followed the subcommand; sys.argv holds the same words
        self.config = parser.parse_args(args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="resume from this checkpoint file (must exist)")
        parser.add_argument("--run_name", type=str | None, default=None, help="run folder RUNS/<model>/<run_name> (default: the next version_N); one that holds a run is refused unless resumed")
        parser.add_argument("--resume", action="store_true", help="continue the run in RUNS/<model>/<run_name> from its last.ckpt (else its newest checkpoint; none: from step 0); metrics.csv is appended to")
        parser.add_argument("--tracking", type=Tracking, default="csv", help="metrics.csv always; tensorboard or mlflow adds that logger (pip install 'medssl[tensorboard]' / 'medssl[mlflow]')")
        parser.add_argument("--auto_fit", "--auto-fit", action="store_true", help="when the estimated peak memory exceeds the budget, shrink batch, crop or turn on activation checkpointing until it fits (else the run stops before allocating)")
        parser.add_argument("--memory_budget", "--memory-budget", type=float | None, default=None, help=f"GiB the run may use on its device (default: what is available; env {BUDGET_ENV})")
        parser.add_lightning_class_args(TolerantCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        for callback, group in self.extra_groups:
            parser.add_lightning_class_args(callback, group)
        if self.default_data:
            parser.set_defaults({"data": {"class_path": self.default_data}})

    def before_instantiate_classes(self) -> None:
        # fail before building models and caches
        ckpt_path = resolve_ckpt_path(self.config.get("ckpt_path"))
        check_tracking(self.config.get("tracking"))
        self.run_start = self._plan_run(ckpt_path)  # before anything can write into the run folder
        if self.memory_plan is not None:  # before any model, cache or run folder exists
            check_memory(self.config, self.memory_plan, self.config.get("auto_fit"), self.config.get("memory_budget"))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        extra: dict[str, Any] = {}
        if _on_cpu(config.get("accelerator", "auto")) and str(config.get("precision")) in MIXED:
            warnings.warn(f"--trainer.precision {config['precision']} needs a GPU; training on the CPU in 32-true", stacklevel=1)
            extra["precision"] = "32-true"
        if config.get("logger") is not False:
            root = config.get("default_root_dir") or "runs"
            start = self.run_start or RunStart(resolve_ckpt_path(self.config.get("ckpt_path")), None)
            extra["logger"] = run_loggers(self.config.get("tracking"), root, type(self.model).__name__.lower(), self._run_name(), config.get("logger"), resume_step=start.resume_step)
        callbacks = list(config.get("callbacks") or [])
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            extra["callbacks"] = [*callbacks, StepProgressBar()]
        if not config.get("plugins") and "fsdp" not in str(config.get("strategy", "")).lower():  # FSDP writes its own
            extra["plugins"] = [AtomicCheckpointIO()]
        return super().instantiate_trainer(**extra, **kwargs)

    def _model_root(self) -> Path | None:
        """``RUNS/<model>``: the model's class name as the CSV logger will name it."""
        trainer = self._get(self.config, "trainer", default={}) or {}
        class_path = str(self._get(self.config, "model", default={}).get("class_path") or "")
        if trainer.get("logger") is False or not class_path:
            return None
        return Path(trainer.get("default_root_dir") or "runs") / class_path.rsplit(".", 1)[-1].lower()

    def _run_name(self) -> str | None:
        model_root = self._model_root()
        given = self.config.get("run_name")
        return given or (run_name_of(self.config.get("ckpt_path"), model_root) if model_root else None)

    def _plan_run(self, ckpt_path: str | None) -> RunStart:
        model_root, run_name = self._model_root(), self._run_name()
        folder = model_root / run_name if model_root is not None and run_name else None
        return plan_run(folder, ckpt_path, bool(self.config.get("resume")))


def _on_cpu(accelerator: Any) -> bool:
    name = str(accelerator)
    return name == "cpu" or (name == "auto" and not torch.cuda.is_available())


def build_cli(cli_class: type[MedsslCLI], model_class: type[LightningModule], argv: list[str], prog: str, description: str) -> MedsslCLI:
    """Parse ``argv`` and instantiate model, data and trainer (nothing runs yet); ``--help-all``
    prints every option."""
    quiet_lightning()
    return cli_class(
        model_class,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={"callbacks": [SigtermCheckpoint(), FinalCheckpoint()]},
        seed_everything_default=0,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": prog, "description": description},
        args=["--help" if a == HELP_ALL else a for a in argv],
        run=False,
    )


def fit_main(build: Callable[[list[str]], MedsslCLI], argv: list[str], what: str, after_fit: Callable[[MedsslCLI], None] | None = None) -> int:
    """Build the CLI from ``argv`` and fit, then ``after_fit(cli)``; returns 0, or 143 after a
    SIGTERM checkpoint.

    Raises:
        medssl.errors.ConfigError: ``--ckpt_path`` names no checkpoint file; the run folder
            holds a run and the command does not resume it.
        medssl.training.NonFiniteLossError: a loss or gradient became NaN/Inf (the message names the step).
    """
    try:
        cli = build(list(argv))
    except SystemExit as exit_:  # --help, --print_config, or a parse error already printed
        return int(exit_.code or 0)
    try:
        start = cli.run_start or RunStart(resolve_ckpt_path(cli.config.get("ckpt_path")), None)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=start.ckpt_path)
    except SIGTERMException:
        log.warning("stopped by SIGTERM after step %d", cli.trainer.global_step)
        return SIGTERM_EXIT
    if after_fit is not None:
        after_fit(cli)
    log.info("%s done: %d steps; run folder %s", what, cli.trainer.global_step, cli.trainer.log_dir)
    best = best_checkpoint(cli.trainer)
    if best:
        log.info("best checkpoint: %s", best)
    return 0


def best_checkpoint(trainer: Trainer) -> str | None:
    """``"PATH (val/dice 0.8123)"`` of the best checkpoint ranked by a metric, else None."""
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor and callback.best_model_path:
            return f"{callback.best_model_path} ({callback.monitor} {float(callback.best_model_score):.4g})"
    return None
