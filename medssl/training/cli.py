"""The LightningCLI behind ``medssl pretrain`` and ``medssl finetune``.

Besides the Trainer, model and data groups it adds:

- ``--checkpoint.*``: the ModelCheckpoint (default: every 1000 steps, all kept, plus ``last.ckpt``);
- ``--ckpt_path FILE``: resume from that checkpoint; a missing file is an error;
- ``--run_name NAME``: the run folder ``RUNS/<model>/<NAME>`` (default: the next ``version_N``).

Checkpoints are written atomically; SIGTERM writes ``checkpoints/sigterm-step=N.ckpt`` after
the current batch and the command exits with status 143. ``--trainer.precision bf16-mixed``
needs a GPU: on a CPU it falls back to ``32-true`` with a warning.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from medssl.training.checkpointing import (
    AtomicCheckpointIO,
    FinalCheckpoint,
    SigtermCheckpoint,
    resolve_ckpt_path,
)

log = logging.getLogger("medssl.train")
SIGTERM_EXIT = 143  # 128 + SIGTERM: the run stopped early, on purpose, with a checkpoint
CHECKPOINT_DEFAULTS = {
    "checkpoint.every_n_train_steps": 1000,
    "checkpoint.save_top_k": -1,
    "checkpoint.save_last": True,
    "checkpoint.filename": "step={step}",
    "checkpoint.auto_insert_metric_name": False,
}
MIXED = ("bf16-mixed", "16-mixed", "bf16", "16", "bf16-true", "16-true")


class MedsslCLI(LightningCLI):
    """LightningCLI with checkpoint group, resume path, run name and CPU-safe precision.

    ``default_data`` (a class path) is the data module used when a config names none;
    ``extra_groups`` adds ``(callback class, group name)`` pairs (e.g. the online probe).
    """

    default_data: str = ""
    extra_groups: tuple[tuple[type, str], ...] = ()

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # ``args`` is what followed the subcommand; sys.argv holds the same words
        self.config = parser.parse_args(args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="resume from this checkpoint file (must exist)")
        parser.add_argument("--run_name", type=str | None, default=None, help="run folder RUNS/<model>/<run_name> (default: the next version_N)")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        for callback, group in self.extra_groups:
            parser.add_lightning_class_args(callback, group)
        if self.default_data:
            parser.set_defaults({"data": {"class_path": self.default_data}})

    def before_instantiate_classes(self) -> None:
        resolve_ckpt_path(self.config.get("ckpt_path"))  # fail before building models and caches

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        extra: dict[str, Any] = {}
        if _on_cpu(config.get("accelerator", "auto")) and str(config.get("precision")) in MIXED:
            warnings.warn(f"--trainer.precision {config['precision']} needs a GPU; training on the CPU in 32-true", stacklevel=1)
            extra["precision"] = "32-true"
        if config.get("logger") in (None, True):
            root = config.get("default_root_dir") or "runs"
            extra["logger"] = CSVLogger(save_dir=root, name=type(self.model).__name__.lower(), version=self.config.get("run_name"))
        if not config.get("plugins") and "fsdp" not in str(config.get("strategy", "")).lower():  # FSDP writes its own
            extra["plugins"] = [AtomicCheckpointIO()]
        return super().instantiate_trainer(**extra, **kwargs)


def _on_cpu(accelerator: Any) -> bool:
    name = str(accelerator)
    return name == "cpu" or (name == "auto" and not torch.cuda.is_available())


def build_cli(cli_class: type[MedsslCLI], model_class: type[LightningModule], argv: list[str], prog: str, description: str) -> MedsslCLI:
    """Parse ``argv`` and instantiate model, data and trainer (nothing runs yet)."""
    with warnings.catch_warnings():  # Lightning's own calls into jsonargparse's deprecated API
        warnings.filterwarnings("ignore", message=r"(?s).*(deprecated in v4|JsonargparseDeprecationWarning)")
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
            args=list(argv),
            run=False,
        )


def fit_main(build: Callable[[list[str]], MedsslCLI], argv: list[str], what: str, after_fit: Callable[[MedsslCLI], None] | None = None) -> int:
    """Build the CLI from ``argv`` and fit, then ``after_fit(cli)``; returns 0, or 143 after a
    SIGTERM checkpoint.

    Raises:
        medssl.errors.ConfigError: ``--ckpt_path`` names no checkpoint file.
        medssl.training.NonFiniteLossError: a loss or gradient became NaN/Inf (the message names the step).
    """
    try:
        cli = build(list(argv))
    except SystemExit as exit_:  # --help, --print_config, or a parse error already printed
        return int(exit_.code or 0)
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resolve_ckpt_path(cli.config.get("ckpt_path")))
    except SIGTERMException:
        log.warning("stopped by SIGTERM after step %d", cli.trainer.global_step)
        return SIGTERM_EXIT
    if after_fit is not None:
        after_fit(cli)
    log.info("%s done: %d steps; run folder %s", what, cli.trainer.global_step, cli.trainer.log_dir)
    return 0
