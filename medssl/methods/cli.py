"""``medssl pretrain``: LightningCLI over the SSL methods and the pretraining data modules.

    medssl pretrain -c configs/trainer/cpu.yaml -c configs/pretrain/voco.yaml \\
        --data.store STORE --trainer.max_steps 20 --trainer.default_root_dir RUNS

Every option is also a flag (``--model.init_args.lr 3e-4`` or ``--model.lr 3e-4``,
``--data.batch_size 4``, ``--trainer.accumulate_grad_batches 4``); ``--print_config`` shows
the whole configuration. Besides the Trainer, model and data groups:

- ``--checkpoint.*``: the ModelCheckpoint (default: every 1000 steps, all kept, plus ``last.ckpt``);
- ``--probe.*``: the online probe (:class:`~medssl.methods.online_probe.OnlineProbe`; off
  unless ``--probe.path`` names a probe set);
- ``--ckpt_path FILE``: resume from that checkpoint; a missing file is an error.

The run folder is ``RUNS/<method>/version_N/`` (or ``RUNS/<method>/<--run_name>/``:
``metrics.csv``, ``config.yaml``, ``checkpoints/``, ``probe.csv``). Checkpoints are written atomically; SIGTERM writes
``checkpoints/sigterm-step=N.ckpt`` after the current batch and exits with status 143.
``--trainer.precision bf16-mixed`` needs a GPU: on a CPU it falls back to ``32-true`` with a
warning. Multi-GPU and multi-node: ``configs/trainer/{ddp,fsdp}.yaml`` and docs/multinode.md.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from medssl.methods.base import SSLMethod
from medssl.methods.online_probe import OnlineProbe
from medssl.training.checkpointing import AtomicCheckpointIO, SigtermCheckpoint, resolve_ckpt_path

log = logging.getLogger("medssl.pretrain")
SIGTERM_EXIT = 143  # 128 + SIGTERM: the run stopped early, on purpose, with a checkpoint
DEFAULT_DATA = "medssl.data.pretrain.PretrainDataModule"
CHECKPOINT_DEFAULTS = {
    "checkpoint.every_n_train_steps": 1000,
    "checkpoint.save_top_k": -1,
    "checkpoint.save_last": True,
    "checkpoint.filename": "step={step}",
    "checkpoint.auto_insert_metric_name": False,
}
MIXED = ("bf16-mixed", "16-mixed", "bf16", "16", "bf16-true", "16-true")


class PretrainCLI(LightningCLI):
    """LightningCLI with the checkpoint and probe groups, a resume path, and CPU-safe defaults."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # ``args`` is what followed ``medssl pretrain``; sys.argv holds the same words (no mix-up
        # for LightningCLI to warn about)
        self.config = parser.parse_args(args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="resume from this checkpoint file (must exist)",
        )
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="run folder RUNS/<method>/<run_name> (default: the next version_N)",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_lightning_class_args(OnlineProbe, "probe")
        parser.set_defaults({"data": {"class_path": DEFAULT_DATA}})

    def before_instantiate_classes(self) -> None:
        resolve_ckpt_path(self.config.get("ckpt_path"))  # fail before building models and caches

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        extra: dict[str, Any] = {}
        if _on_cpu(config.get("accelerator", "auto")) and str(config.get("precision")) in MIXED:
            warnings.warn(
                f"--trainer.precision {config['precision']} needs a GPU; training on the CPU in 32-true",
                stacklevel=1,
            )
            extra["precision"] = "32-true"
        if config.get("logger") in (None, True):
            root = config.get("default_root_dir") or "runs"
            name, version = _method_name(self.model), self.config.get("run_name")
            extra["logger"] = CSVLogger(save_dir=root, name=name, version=version)
        if not config.get("plugins") and "fsdp" not in str(config.get("strategy", "")):
            extra["plugins"] = [AtomicCheckpointIO()]
        return super().instantiate_trainer(**extra, **kwargs)


def _on_cpu(accelerator: Any) -> bool:
    name = str(accelerator)
    return name == "cpu" or (name == "auto" and not torch.cuda.is_available())


def _method_name(model: Any) -> str:
    return type(model).__name__.lower()


def build_cli(argv: list[str]) -> PretrainCLI:
    """Parse ``argv`` and instantiate model, data and trainer (nothing runs yet)."""
    return PretrainCLI(
        SSLMethod,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={"callbacks": [SigtermCheckpoint()]},
        seed_everything_default=0,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "prog": "medssl pretrain",
            "description": "Self-supervised pretraining (LightningCLI; every option is also a flag).",
        },
        args=argv,
        run=False,
    )


def pretrain_main(argv: list[str]) -> int:
    """``medssl pretrain ARGS``: train; returns 0, or 143 after a SIGTERM checkpoint.

    Raises:
        medssl.errors.ConfigError: ``--ckpt_path`` names no checkpoint file.
        medssl.methods.NonFiniteLossError: a loss or gradient became NaN/Inf (message names the step).
    """
    try:
        with warnings.catch_warnings():  # Lightning's own calls into jsonargparse's deprecated API
            warnings.filterwarnings(
                "ignore", message=r"(?s).*(deprecated in v4|JsonargparseDeprecationWarning)"
            )
            cli = build_cli(list(argv))
    except SystemExit as exit_:  # --help, --print_config, or a parse error already printed
        return int(exit_.code or 0)
    try:
        cli.trainer.fit(
            cli.model,
            datamodule=cli.datamodule,
            ckpt_path=resolve_ckpt_path(cli.config.get("ckpt_path")),
        )
    except SIGTERMException:
        log.warning("stopped by SIGTERM after step %d", cli.trainer.global_step)
        return SIGTERM_EXIT
    log.info(
        "pretraining done: %d steps; run folder %s", cli.trainer.global_step, cli.trainer.log_dir
    )
    return 0
