"""CPUFSDPStrategy: Lightning's FSDP on CPU processes (gloo).

Two ranks forked from the test process (set up as torchrun would, so Lightning launches
nothing itself) train the tiny regression on halves of each batch; rank 0's checkpoint must
hold the full, standard state (plain parameter names, optimiser state keyed by parameter
index) equal to one process's after the same steps on whole batches. That is what the
subclass exists for: Lightning refuses FSDPStrategy on a CPU, torch FSDP needs a device id,
and gathering with ``offload_to_cpu`` crashes. The method-level twin (SimCLR gradients, the
pretrain CLI with the online probe) is ``slow``: tests/methods/test_fsdp.py.

FSDP hands ``configure_optimizers`` 1-D shards of the original parameters
(``use_orig_params=True``, Lightning's FSDPStrategy default), so weight decay is decided by each
parameter's rank before wrapping (``GuardedModule.configure_model``): with weight decay on,
the sharded run still equals the single-process one.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.distributed.fsdp import FullyShardedDataParallel

from medssl.training.fsdp_cpu import CPUFSDPStrategy
from medssl.training.module import decay_groups
from tests.training.tiny import TinyData, TinyRegression, quiet_trainer

pytestmark = pytest.mark.timeout(120)  # a rendezvous that never completes fails, not hangs
STEPS, GLOBAL_BATCH = 2, 4


class Probe(TinyRegression):
    """Records how the strategy wrapped the model."""

    def on_train_start(self) -> None:
        model = self.trainer.strategy.model
        self.wrapped_on = (
            model.compute_device if isinstance(model, FullyShardedDataParallel) else None
        )


def train(out: Path, devices: int, weight_decay: float) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    model = Probe(weight_decay=weight_decay)
    saver = ModelCheckpoint(dirpath=out, save_last=True, every_n_train_steps=STEPS)
    trainer = quiet_trainer(
        devices=devices,
        strategy=CPUFSDPStrategy() if devices > 1 else "auto",
        max_steps=STEPS,
        enable_checkpointing=True,
        use_distributed_sampler=False,
        callbacks=[saver],
    )
    trainer.fit(
        model, datamodule=TinyData(batch_size=GLOBAL_BATCH, num_batches=STEPS, ranks=devices)
    )
    if devices > 1:
        assert model.wrapped_on == torch.device("cpu")


def _rank(rank: int, out: Path, port: int, weight_decay: float) -> None:
    os.environ.update(
        {
            "TORCHELASTIC_RUN_ID": "medssl-test",  # Lightning: processes are created outside
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "GROUP_RANK": "0",
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
        }
    )
    train(out, devices=2, weight_decay=weight_decay)


@pytest.mark.parametrize(
    "weight_decay",
    [
        0.0,
        0.1,
    ],
)
def test_two_cpu_ranks_save_the_full_standard_checkpoint_one_process_would(tmp_path, weight_decay):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    train(tmp_path / "single", devices=1, weight_decay=weight_decay)
    mp.start_processes(
        _rank,
        args=(tmp_path / "fsdp", port, weight_decay),
        nprocs=2,
        start_method="fork",
        join=True,
    )
    assert not dist.is_initialized()  # the group lived in the forked ranks only

    single = torch.load(tmp_path / "single" / "last.ckpt", weights_only=True)
    sharded = torch.load(tmp_path / "fsdp" / "last.ckpt", weights_only=True)
    assert sharded["global_step"] == single["global_step"] == STEPS
    assert set(sharded["state_dict"]) == set(
        TinyRegression().state_dict()
    )  # no flat or wrapped names
    for name, value in single["state_dict"].items():
        torch.testing.assert_close(sharded["state_dict"][name], value, atol=1e-5, rtol=0, msg=name)
    TinyRegression().load_state_dict(sharded["state_dict"], strict=True)

    # optimiser state keyed by parameter index: one process numbers parameters in its groups'
    # order (decayed first), the FSDP layout in the module's order; compare by name
    model = TinyRegression()
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = [
        names[id(p)]
        for group in decay_groups(model.named_parameters(), 0.01)
        for p in group["params"]
    ]
    by_module = list(names.values())
    (expected,), (got,) = single["optimizer_states"], sharded["optimizer_states"]
    assert sorted(got["state"]) == list(range(len(by_module)))
    for index, name in enumerate(by_module):
        for key in ("exp_avg", "exp_avg_sq"):
            want = expected["state"][by_group.index(name)][key]
            torch.testing.assert_close(
                got["state"][index][key], want, atol=1e-5, rtol=0, msg=f"{name}.{key}"
            )
