"""``--tracking``: metrics.csv always, TensorBoard or MLflow beside it, in the same run folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from medssl.errors import ConfigError
from medssl.training.cli import fit_main
from medssl.training.tracking import run_loggers
from tests.training.test_cli import build, config

HAS_TENSORBOARD = any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX"))
needs_tensorboard = pytest.mark.skipif(not HAS_TENSORBOARD, reason="pip install 'medssl[tensorboard]'")


def test_the_csv_log_comes_first_and_any_given_logger_follows(tmp_path):
    (csv,) = run_loggers("csv", tmp_path, "tiny", "r")
    assert isinstance(csv, CSVLogger) and Path(csv.log_dir) == tmp_path / "tiny" / "r"
    mine = CSVLogger(tmp_path / "mine")
    assert run_loggers("csv", tmp_path, "tiny", "r", given=[mine]) == [mine]  # a configured CSV log is the CSV log


@needs_tensorboard
def test_tensorboard_writes_into_the_csv_logs_run_folder(tmp_path):
    (tmp_path / "tiny" / "version_0").mkdir(parents=True)  # an earlier run: both loggers take version_1
    csv, board = run_loggers("tensorboard", tmp_path, "tiny", None)
    assert isinstance(board, TensorBoardLogger)
    assert Path(csv.log_dir) == Path(board.log_dir) == tmp_path / "tiny" / "version_1"


@needs_tensorboard
def test_a_run_with_tensorboard_writes_events_and_metrics_csv(tmp_path):
    argv = ["-c", str(config(tmp_path, log_every_n_steps=1)), "--run_name", "r", "--tracking", "tensorboard"]
    assert fit_main(build, argv, "tiny") == 0
    run = tmp_path / "runs" / "tinyregression" / "r"
    assert list(run.glob("events.out.tfevents.*"))
    assert "train/total" in (run / "metrics.csv").read_text().splitlines()[0]
    assert (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed")
def test_mlflow_without_its_package_fails_before_anything_is_built(tmp_path):
    with pytest.raises(ConfigError, match=r"--tracking mlflow: the mlflow package is not installed; pip install 'medssl\[mlflow\]'"):
        fit_main(build, ["-c", str(config(tmp_path)), "--tracking", "mlflow"], "tiny")
    assert not (tmp_path / "runs").exists()


def test_an_unknown_tracker_is_a_parse_error(tmp_path):
    assert fit_main(build, ["-c", str(config(tmp_path)), "--tracking", "wandb"], "tiny") != 0
