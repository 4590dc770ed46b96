"""``medssl pretrain``: the shared LightningCLI (:mod:`medssl.training.cli`) over the SSL methods.

    medssl pretrain -c configs/trainer/cpu.yaml -c configs/pretrain/voco.yaml \\
        --data.store STORE --trainer.max_steps 20 --trainer.default_root_dir RUNS

Every option is also a flag (``--model.init_args.lr 3e-4`` or ``--model.lr 3e-4``,
``--data.batch_size 4``, ``--trainer.accumulate_grad_batches 4``); ``--print_config`` shows
the whole configuration. Besides the groups of :class:`~medssl.training.cli.MedsslCLI`,
``--probe.*`` configures the online probe (:class:`~medssl.training.online_probe.OnlineProbe`;
off unless ``--probe.path`` names a probe set). The run folder is ``RUNS/<method>/<run_name>/``
(``metrics.csv``, ``config.yaml``, ``checkpoints/``, ``probe.csv``). Multi-GPU and multi-node:
``configs/trainer/{ddp,fsdp}.yaml`` and docs/multinode.md; ``configs/trainer/fsdp_cpu.yaml`` runs
FSDP on CPU processes (gloo) through :class:`~medssl.training.fsdp_cpu.CPUFSDPStrategy`, to check a run without GPUs.
"""

from __future__ import annotations

from medssl.methods.base import SSLMethod
from medssl.methods.workload import PRETRAIN_MEMORY
from medssl.training.cli import SIGTERM_EXIT, MedsslCLI, fit_main
from medssl.training.cli import build_cli as _build
from medssl.training.online_probe import OnlineProbe

__all__ = ["SIGTERM_EXIT", "PretrainCLI", "build_cli", "pretrain_main"]


class PretrainCLI(MedsslCLI):
    default_data = "medssl.data.pretrain.PretrainDataModule"
    extra_groups = ((OnlineProbe, "probe"),)
    memory_plan = PRETRAIN_MEMORY


def build_cli(argv: list[str]) -> PretrainCLI:
    """Parse ``argv`` and instantiate method, data and trainer (nothing runs yet)."""
    return _build(
        PretrainCLI,
        SSLMethod,
        argv,
        "medssl pretrain",
        "Self-supervised pretraining (LightningCLI; every option is also a flag).",
    )


def pretrain_main(argv: list[str]) -> int:
    """``medssl pretrain ARGS``: train; returns 0, or 143 after a SIGTERM checkpoint."""
    return fit_main(build_cli, argv, "pretraining")
