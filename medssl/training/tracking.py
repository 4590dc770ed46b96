"""Where a run's metrics go: ``metrics.csv`` always, plus TensorBoard or MLflow on request.

``--tracking`` (any config may set ``tracking:``):

- ``csv`` (default): ``RUNS/<model>/<run>/metrics.csv`` only;
- ``tensorboard``: also TensorBoard event files in the same run folder
  (``tensorboard --logdir RUNS``; needs ``pip install 'medssl[tensorboard]'``);
- ``mlflow``: also an MLflow run named like the run folder in the experiment named like the
  model, at ``$MLFLOW_TRACKING_URI`` (default ``RUNS/mlruns``; needs ``pip install 'medssl[mlflow]'``).

The CSV log comes first, so the run folder (``trainer.log_dir``: checkpoints, ``config.yaml``)
stays ``RUNS/<model>/<run>``, and other code (the online probe's ``probe.csv``, the
benchmarks) keeps reading ``metrics.csv``. A logger given as ``trainer.logger`` (a class
path) is added after it; ``trainer.logger: false`` turns logging off.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal, get_args

from lightning.pytorch.loggers import CSVLogger, Logger

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


def run_loggers(tracking: str, root: str | Path, name: str, run_name: str | None, given: Any = None) -> list[Logger]:
    """The run's loggers: a CSVLogger at ``root/name/run_name`` (``version_N`` when None)
    unless ``given`` holds one, the ``tracking`` logger writing to the same run folder, then
    the other loggers in ``given`` (the trainer config's ``logger``: None/True, a Logger or a
    list of them)."""
    check_tracking(tracking)
    extra = [] if given in (None, True) else list(given) if isinstance(given, (list, tuple)) else [given]
    csv = next((g for g in extra if isinstance(g, CSVLogger)), None)
    if csv is None:
        csv = CSVLogger(save_dir=root, name=name, version=run_name)
    else:
        extra.remove(csv)
    loggers: list[Logger] = [csv]
    if tracking == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        # the CSV logger's version, resolved now: both write into one run folder
        loggers.append(TensorBoardLogger(save_dir=csv.save_dir, name=csv.name, version=csv.version, default_hp_metric=False))
    elif tracking == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        run = csv.version if isinstance(csv.version, str) else f"version_{csv.version}"
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (Path(csv.save_dir).resolve() / "mlruns").as_uri()
        loggers.append(MLFlowLogger(experiment_name=csv.name, run_name=run, tracking_uri=uri))
    return loggers + extra
