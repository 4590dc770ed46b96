"""DDP on 2 CPU processes (gloo) equals one process on the same global batch (SimCLR, step 1).

InfoNCE gathers negatives from every rank with gradient; DDP averages parameter gradients.
The mean of the two ranks' losses and the (synchronised) gradients must equal the
single-process loss and gradients to 1e-5.

Default suite: Lightning's ``ddp_fork`` forks the two ranks from the test process (~1-2 s).
``slow``: ``ddp_run.py`` as a script under Lightning's ``ddp`` launcher, the way ``medssl
pretrain`` runs, one new interpreter per rank (~30 s on 2 cores).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.methods import ddp_run

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
    assert_ranks_equal_single(tmp_path, atol)


def assert_ranks_equal_single(tmp_path: Path, atol: float = 1e-5) -> None:
    """``tmp_path/ddp/rank{0,1}.pt`` against ``tmp_path/single/rank0.pt`` (see above)."""
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)  # a rendezvous that never completes fails, not hangs
def test_two_forked_gloo_ranks_give_the_single_process_loss_and_gradients(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_PORT", str(free_port()))  # Lightning reads it; undone after
    for name, devices, strategy in (("single", 1, "ddp"), ("ddp", 2, "ddp_fork")):
        (tmp_path / name).mkdir()
        ddp_run.main(tmp_path / name, devices, DEFAULT_CASE, strategy)
    assert not torch.distributed.is_initialized()  # the group lived in the forked ranks only
    assert_ranks_equal_single(tmp_path)


@pytest.mark.slow  # two subprocess runs, ~30 s on 2 cores
def test_two_gloo_ranks_give_the_single_process_loss_and_gradients(tmp_path):
    assert_ddp_equals_single(tmp_path)
