"""A run folder that holds a run is resumed on request and never overwritten (issue 15, item 13).

The reproductions, on the tiny model of test_cli: resuming with ``--ckpt_path .../last.ckpt``
wiped ``metrics.csv``; rerunning the same command without it restarted at step 0 in the same
folder, replaced ``last.ckpt`` and deleted ``metrics.csv``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from medssl.errors import ConfigError
from medssl.training.cli import fit_main
from medssl.training.run_folder import checkpoint_step, plan_run
from tests.training.test_cli import build, config


def _steps(run: Path) -> list[int]:
    with (run / "metrics.csv").open(newline="") as file:
        return [int(row["step"]) for row in csv.DictReader(file)]


def _train(tmp_path: Path, max_steps: int, *extra: str) -> int:
    argv = ["-c", str(config(tmp_path, max_steps=max_steps, log_every_n_steps=1)), *extra]
    return fit_main(build, [*argv, "--checkpoint.every_n_train_steps", "3"], "tiny")


@pytest.fixture
def run(tmp_path) -> Path:
    assert _train(tmp_path, 6, "--run_name", "r") == 0
    folder = tmp_path / "runs" / "tinyregression" / "r"
    assert _steps(folder) == list(range(6))
    return folder


def test_resuming_from_a_checkpoint_appends_to_the_history(tmp_path, run):
    earlier = (run / "checkpoints" / "step=3.ckpt").as_posix()
    assert _train(tmp_path, 9, "--run_name", "r", "--ckpt_path", earlier) == 0
    assert _steps(run) == list(range(9))  # 0-2 kept, 3-5 repeated once from the checkpoint


def test_a_checkpoint_of_a_run_folder_continues_that_folder(tmp_path, run):
    assert _train(tmp_path, 9, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")) == 0
    assert _steps(run) == list(range(9))
    assert [p.name for p in run.parent.iterdir()] == ["r"]  # no new version_N


def test_rerunning_without_resume_is_refused_and_leaves_the_run_untouched(tmp_path, run):
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError) as refused:
        _train(tmp_path, 6, "--run_name", "r")
    message = str(refused.value)
    assert "\n" not in message
    assert str(run) in message and "--resume" in message
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resume_continues_from_last_ckpt(tmp_path, run):
    assert _train(tmp_path, 12, "--run_name", "r", "--resume") == 0
    assert _steps(run) == list(range(12))
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 12


def test_resume_of_a_new_folder_starts_it(tmp_path):
    assert _train(tmp_path, 3, "--run_name", "new", "--resume") == 0
    assert _steps(tmp_path / "runs" / "tinyregression" / "new") == [0, 1, 2]


def test_a_truncated_checkpoint_is_one_clean_error(tmp_path, run):
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        checkpoint_step(str(last))
    with pytest.raises(ConfigError, match="last.ckpt: not a readable checkpoint"):
        _train(tmp_path, 9, "--run_name", "r", "--resume")


def test_resume_and_ckpt_path_together_or_without_a_run_name_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="give one"):
        plan_run(tmp_path, str(tmp_path / "x.ckpt"), resume=True)
    with pytest.raises(ConfigError, match="needs --run_name"):
        plan_run(None, None, resume=True)


def test_hidden_temporaries_of_a_cut_write_are_not_a_run(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".0a1b.medssl-tmp.last.ckpt").write_bytes(b"half")
    assert plan_run(tmp_path, None, resume=False).ckpt_path is None
