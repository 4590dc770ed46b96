"""Where a run's metrics go: ``metrics.csv`` always, plus TensorBoard or MLflow on request.

``--tracking`` (any config may set ``tracking:``):

- ``csv`` (default): ``RUNS/<model>/<run>/metrics.csv`` only;
- ``tensorboard``: also TensorBoard event files in the same run folder
  (``tensorboard --logdir RUNS``; needs ``pip install 'medssl[tensorboard]'``);
- ``mlflow``: also an MLflow run named like the run folder in the experiment named like the
  model, at ``$MLFLOW_TRACKING_URI`` (default ``RUNS/mlruns``; needs ``pip install 'medssl[mlflow]'``).

A resumed run keeps its history: ``metrics.csv`` keeps the rows logged before the step the
checkpoint holds and the new rows are appended (Lightning's CSVLogger deletes the file).

The CSV log comes first, so the run folder (``trainer.log_dir``: checkpoints, ``config.yaml``)
stays ``RUNS/<model>/<run>``, and other code (the online probe's ``probe.csv``, the
benchmarks) keeps reading ``metrics.csv``. A logger given as ``trainer.logger`` (a class
path) is added after it; ``trainer.logger: false`` turns logging off.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path
from typing import Any, Literal, get_args

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from medssl.errors import ConfigError

Tracking = Literal["csv", "tensorboard", "mlflow"]
TRACKERS: tuple[str, ...] = get_args(Tracking)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}


def check_tracking(tracking: str) -> None:
    """Fail before anything is built when ``tracking`` is unknown or its package is missing.

    Raises:
        ConfigError: names the option, and the extra to install.
    """
    if tracking not in TRACKERS:
        raise ConfigError(f"--tracking {tracking}: expected one of {', '.join(TRACKERS)}")
    needed = PACKAGES.get(tracking, ())
    if needed and not any(importlib.util.find_spec(name) for name in needed):
        raise ConfigError(f"--tracking {tracking}: the {needed[0]} package is not installed; pip install 'medssl[{tracking}]'")


class _ResumingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued.

    Rows at or after ``resume_step`` are dropped first: they were logged after the checkpoint
    was written, by steps the resumed run repeats.
    """

    def __init__(self, log_dir: str, resume_step: int) -> None:
        self.resume_step = resume_step  # before super().__init__, which checks the folder
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if _step(row) < self.resume_step]
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = sorted(header)


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")  # an unreadable step is dropped (nan < n is False)


class ResumingCSVLogger(CSVLogger):
    """CSVLogger that continues ``metrics.csv`` from ``resume_step`` (None: a fresh run)."""

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None and self.resume_step is not None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(self.log_dir, self.resume_step)
        return super().experiment


def run_loggers(tracking: str, root: str | Path, name: str, run_name: str | None, given: Any = None, resume_step: int | None = None) -> list[Logger]:
    """The run's loggers: a CSVLogger at ``root/name/run_name`` (``version_N`` when None)
    unless ``given`` holds one, the ``tracking`` logger writing to the same run folder, then
    the other loggers in ``given`` (the trainer config's ``logger``: None/True, a Logger or a
    list of them). ``resume_step``: the step of the checkpoint a resumed run starts from;
    ``metrics.csv`` keeps the rows before it."""
    check_tracking(tracking)
    extra = [] if given in (None, True) else list(given) if isinstance(given, (list, tuple)) else [given]
    csv_logger = next((g for g in extra if isinstance(g, CSVLogger)), None)
    if csv_logger is None:
        csv_logger = ResumingCSVLogger(save_dir=root, name=name, version=run_name, resume_step=resume_step)
    else:
        extra.remove(csv_logger)
    loggers: list[Logger] = [csv_logger]
    if tracking == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        # the CSV logger's version, resolved now: both write into one run folder
        loggers.append(TensorBoardLogger(save_dir=csv_logger.save_dir, name=csv_logger.name, version=csv_logger.version, default_hp_metric=False))
    elif tracking == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        run = csv_logger.version if isinstance(csv_logger.version, str) else f"version_{csv_logger.version}"
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (Path(csv_logger.save_dir).resolve() / "mlruns").as_uri()
        loggers.append(MLFlowLogger(experiment_name=csv_logger.name, run_name=run, tracking_uri=uri))
    return loggers + extra
