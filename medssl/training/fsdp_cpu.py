"""FSDP on CPU processes (gloo), so a sharded run can be checked on a machine without GPUs.

``configs/trainer/fsdp_cpu.yaml`` selects it; on a GPU it behaves as Lightning's FSDPStrategy.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import (
    FullOptimStateDictConfig,
    FullStateDictConfig,
    FullyShardedDataParallel,
    OptimStateKeyType,
    StateDictType,
)

__all__ = ["CPUFSDPStrategy"]


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy on CPU processes (gloo), e.g. ``--trainer.accelerator cpu``.

    Lightning 2.6 refuses ``FSDPStrategy`` itself with a CPU accelerator (the exact-type check
    in ``AcceleratorConnector._check_strategy_and_fallback``) and wraps the model with
    ``device_id=root_device.index``, None on a CPU, which torch FSDP rejects ("FSDP needs a
    non-CPU accelerator device"). This subclass passes ``device_id=cpu``, and gathers full
    checkpoints without ``offload_to_cpu`` (with it, torch FSDP 2.13 frees the CPU memory the
    state dict views and the clone crashes); on a GPU it is FSDPStrategy unchanged.
    """

    def _full_on_cpu(self) -> AbstractContextManager | None:
        """The full-state-dict context for CPU ranks (rank 0 gathers, nothing offloaded); else None."""
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return None
        return FullyShardedDataParallel.state_dict_type(
            self.model,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),
        )

    def lightning_module_state_dict(self) -> dict:
        context = self._full_on_cpu()
        if context is None:
            return super().lightning_module_state_dict()
        with context:
            return self.model.state_dict()

    def optimizer_state(self, optimizer) -> dict:
        context = self._full_on_cpu()
        if context is None:
            return super().optimizer_state(optimizer)
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's own
        with context:
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
        if self.global_rank == 0:  # the standard layout, as FSDPStrategy writes it
            state = FullyShardedDataParallel.rekey_optim_state_dict(
                state, OptimStateKeyType.PARAM_ID, self.model
            )
        return state

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        wrapped = any(isinstance(m, FullyShardedDataParallel) for m in model.modules())
        if self.root_device.type != "cpu" or wrapped or self._activation_checkpointing_kwargs:
            return super()._setup_model(model)
        return FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
