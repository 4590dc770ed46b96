"""DDP on 2 CPU processes (gloo) equals one process on the same global batch (SimCLR, step 1).

InfoNCE gathers negatives from every rank with gradient; DDP averages parameter gradients.
The mean of the two ranks' losses and the (synchronised) gradients must equal the
single-process loss and gradients to 1e-5.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "methods" / "ddp_run.py"
DEFAULT_CASE = "tests.methods.ddp_run:simclr_case"


def run(out: Path, devices: int, case: str | None = None, strategy: str = "ddp") -> None:
    """Run ``ddp_run.py`` (its doc: ``case`` is ``module:function``, ``strategy`` ddp or fsdp)."""
    out.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MASTER_PORT": str(29_500 + os.getpid() % 1000),
    }
    result = subprocess.run(
        check=False,
        args=[sys.executable, str(SCRIPT), str(out), str(devices), case or DEFAULT_CASE, strategy],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def assert_ddp_equals_single(
    tmp_path: Path, case: str | None = None, atol: float = 1e-5, strategy: str = "ddp"
) -> None:
    """Loss mean over 2 gloo ranks and every synchronised gradient equal one process's."""
    run(tmp_path / "single", 1, case)
    run(tmp_path / "ddp", 2, case, strategy)
    single = torch.load(tmp_path / "single" / "rank0.pt", weights_only=True)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(single["loss"], abs=atol)
    assert ranks[0]["loss"] != pytest.approx(
        ranks[1]["loss"], abs=1e-6
    )  # each rank really held half the batch
    assert single["grads"].keys() == ranks[0]["grads"].keys() and len(single["grads"]) > 10
    for name, grad in single["grads"].items():
        for r in ranks:
            torch.testing.assert_close(r["grads"][name], grad, atol=atol, rtol=0, msg=name)


def test_two_gloo_ranks_give_the_single_process_loss_and_gradients(tmp_path):
    assert_ddp_equals_single(tmp_path)
