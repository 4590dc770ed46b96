"""``medssl pretrain``'s memory check (issue 14): a run whose estimated peak exceeds the budget
stops before the model, the data or a run folder exists, in one line with settings that fit;
``--auto-fit`` applies those settings and says so.

The budget is set through ``MEDSSL_MEMORY_BUDGET_GB`` at this process's resident set plus
1 GiB: VoCo's smoke model on 256 x 256 x 64 regions, 2 per batch (~2.2 GiB above the
process, benchmarks/RESULTS.md), does not fit; smaller regions do.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import pytest
import torch
import yaml

from medssl.cli import main
from medssl.memory import BUDGET_ENV, GIB
from medssl.memory.budget import resident_bytes
from medssl.methods.voco import VoCo
from tests.methods.phantom_data import phantom_store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return phantom_store(tmp_path_factory.mktemp("memory") / "store")


@pytest.fixture
def tight_budget(monkeypatch) -> float:
    budget = round((resident_bytes() + GIB) / GIB, 2)
    monkeypatch.setenv(BUDGET_ENV, str(budget))
    return budget


def voco_args(store: Path, runs: Path, *extra: str) -> list[str]:
    return [
        "pretrain",
        "-c", str(ROOT / "configs/trainer/cpu.yaml"),
        "-c", str(ROOT / "configs/pretrain/voco.yaml"),
        "-c", str(ROOT / "configs/pretrain/smoke.yaml"),
        "--data.store", str(store),
        "--data.crop_size", "[256,256,64]",
        "--data.batch_size", "2",
        "--trainer.max_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(runs),
        *extra,
    ]  # fmt: skip


def test_a_run_that_does_not_fit_stops_before_allocating_in_one_line(store, tmp_path, tight_budget, monkeypatch, capsys):
    built_on = []  # the device each VoCo was built on: the check builds on meta only
    init = VoCo.__init__

    @functools.wraps(init)  # the signature LightningCLI reads stays VoCo's
    def spy(self, *args, **kwargs):
        built_on.append(torch.empty(0).device.type)
        init(self, *args, **kwargs)

    monkeypatch.setattr(VoCo, "__init__", spy)
    assert main(voco_args(store, tmp_path / "runs")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err[-3:]
    line = err[0]
    assert line.startswith("medssl pretrain: memory: estimated peak ")
    assert f"exceeds {tight_budget:.1f} GiB ({BUDGET_ENV})" in line
    assert "--data.crop_size [" in line and "--auto-fit" in line and "configs/pretrain/smoke.yaml" in line
    assert built_on and set(built_on) == {"meta"}
    assert not (tmp_path / "runs").exists()  # no stub run folder


def test_auto_fit_shrinks_the_regions_until_the_run_fits_and_says_so(store, tmp_path, tight_budget, caplog):
    with caplog.at_level(logging.INFO, logger="medssl.memory"):
        assert main(voco_args(store, tmp_path / "runs", "--auto-fit")) == 0
    fitted = [r.getMessage() for r in caplog.records if r.name == "medssl.memory" and "--auto-fit" in r.getMessage()]
    assert len(fitted) == 1, fitted
    assert "--data.crop_size [" in fitted[0] and f"of {tight_budget:.1f} GiB" in fitted[0]
    config = yaml.safe_load((tmp_path / "runs/voco/version_0/config.yaml").read_text())
    crop = config["data"]["init_args"]["crop_size"]
    assert crop != [256, 256, 64]
    # VoCo's 4 x 4 grid of a backbone with stride 16: in-plane sides stay multiples of 64
    assert crop[0] % 64 == 0 and crop[1] % 64 == 0 and crop[2] % 16 == 0


def test_a_run_that_fits_logs_its_estimate(store, tmp_path, caplog, monkeypatch):
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    args = [a for a in voco_args(store, tmp_path / "runs") if a not in ("[256,256,64]",)]
    args[args.index("--data.crop_size") : args.index("--data.crop_size") + 1] = []
    with caplog.at_level(logging.INFO, logger="medssl.memory"):
        assert main([*args, "--trainer.max_steps", "1"]) == 0
    logged = [r.getMessage() for r in caplog.records if r.name == "medssl.memory"]
    assert len(logged) == 1 and logged[0].startswith("estimated peak ") and " on cpu of " in logged[0]
