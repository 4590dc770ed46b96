"""FSDP on 2 CPU processes (gloo) equals one process on the same global batch, and runs from the CLI.

:class:`~medssl.training.fsdp_cpu.CPUFSDPStrategy` (Lightning's FSDPStrategy with ``device_id=cpu``)
shards the SimCLR module over two ranks; the mean loss and the full gradients (gathered from
the shards) must equal one process's to 1e-5, as for DDP (tests/methods/test_ddp.py). Then
``medssl pretrain -c configs/trainer/fsdp_cpu.yaml`` runs 2 steps over 2 processes with the
online probe on, which gathers the full backbone on every rank to embed the probe set.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.methods.phantom_data import phantom_probe_set, phantom_store
from tests.methods.test_ddp import assert_ddp_equals_single

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


@pytest.mark.slow
def test_two_fsdp_cpu_ranks_give_the_single_process_loss_and_full_gradients(tmp_path):
    assert_ddp_equals_single(tmp_path, strategy="fsdp")


@pytest.mark.slow
def test_pretrain_cli_runs_fsdp_on_two_cpu_processes_with_the_online_probe(tmp_path):
    store = phantom_store(tmp_path / "store", n=3)
    probe = phantom_probe_set(store, crop_size=(32, 32, 16), per_class=4)
    probe_file = probe.save(tmp_path / "probe.safetensors")
    runs = tmp_path / "runs"
    args = [
        sys.executable, "-m", "medssl", "pretrain",
        "-c", str(CONFIGS / "trainer" / "fsdp_cpu.yaml"),
        "-c", str(CONFIGS / "pretrain" / "simclr.yaml"),
        "-c", str(CONFIGS / "pretrain" / "smoke.yaml"),
        "--data.store", str(store),
        "--trainer.max_steps", "2",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(runs),
        "--probe.path", str(probe_file),
        "--probe.every_n_steps", "1",
        "--probe.linear_steps", "20",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MASTER_PORT": str(28_500 + os.getpid() % 1000)}  # fmt: skip
    result = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    run = runs / "simclr" / "version_0"
    with open(run / "probe.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert all(0.0 <= float(r["knn_acc"]) <= 1.0 for r in rows)
    checkpoint = torch.load(
        run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu"
    )
    stem = checkpoint["state_dict"]["backbone.stem.0.weight"]
    assert stem.shape == (8, 1, 3, 3, 3)  # gathered into one full file, not a shard
