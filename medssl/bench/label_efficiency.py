"""The label-efficiency harness: what pretraining buys when few cases are labelled.

For each task, each initialisation (``scratch`` and every named encoder artifact), each
fraction of the labelled training cases and each seed, one ``medssl finetune`` run with the
same budget (steps, crops, trainer); then a validation pass over the same held-out cases.
Fractions are nested per seed (the 5 % subset lies inside the 10 % subset), so a curve
compares like with like. Every run's metrics go to ``results.csv`` as they arrive; a rerun
skips the runs already there, so a killed harness resumes. ``harness.json`` records the
budget and the positive control for the report.

The positive control (``control``, one of the named encoders) is an encoder pretrained *with*
labels (supervised on other structures or other slabs): it must beat scratch at the lowest
fraction, or the report says the harness cannot tell at this budget.

A run's config files are the trainer's, then the task's list, in order (later files win):
by default ``configs/finetune/<task>.yaml`` alone; an experiment composes its own, e.g.
``segmentation.yaml, smoke.yaml, configs/data/demo.yaml``. Any value ``-c`` takes (a file or
an inline YAML mapping) may stand in the list.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medssl.atomic import atomic_write_bytes
from medssl.bench.report import HarnessRecord
from medssl.errors import ConfigError
from medssl.tasks.cli import build_cli
from medssl.types import TaskKind

log = logging.getLogger("medssl.bench")
FIELDS = ("task", "init", "fraction", "seed", "train_cases", "metric", "value")
# the metric that summarises each task in the table and the plot (all metrics go to the CSV)
HEADLINE = {TaskKind.SEGMENTATION: "dice", TaskKind.DETECTION: "froc_cpm", TaskKind.CLASSIFICATION: "auroc"}
TASK_CONFIGS = {t: (f"configs/finetune/{t}.yaml",) for t in HEADLINE}


@dataclass(frozen=True)
class HarnessConfig:
    """What to run: ``encoders`` maps an initialisation's name to an artifact folder;
    ``task_configs`` a task to its config list (default :data:`TASK_CONFIGS`); ``control``
    names the encoder pretrained with labels that must beat scratch (the positive control)."""

    store: str
    out: str
    tasks: Sequence[TaskKind] = (TaskKind.SEGMENTATION,)  # plain strings are parsed
    fractions: Sequence[float] = (0.1, 0.5, 1.0)
    seeds: Sequence[int] = (0, 1, 2)
    encoders: dict[str, str] = field(default_factory=dict)
    scratch: bool = True
    max_steps: int = 100
    trainer_configs: Sequence[str] = ("configs/trainer/cpu.yaml",)
    task_configs: dict[TaskKind, tuple[str, ...]] = field(default_factory=dict)  # plain strings are parsed; one path is a list of one
    extra_args: Sequence[str] = ()
    control: str | None = None

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in HEADLINE]
        if unknown:
            raise ConfigError(f"unknown task(s) {unknown}; expected some of {', '.join(HEADLINE)}")
        object.__setattr__(self, "tasks", tuple(TaskKind(t) for t in self.tasks))
        unknown = [t for t in self.task_configs if t not in HEADLINE]
        if unknown:
            raise ConfigError(f"config list(s) for unknown task(s) {unknown}; expected some of {', '.join(HEADLINE)}")
        lists = {TaskKind(t): (v,) if isinstance(v, str) else tuple(str(c) for c in v) for t, v in self.task_configs.items()}
        empty = [t for t, configs in lists.items() if not configs]
        if empty:
            raise ConfigError(f"task(s) {empty}: an empty config list; give at least the task's file")
        object.__setattr__(self, "task_configs", lists)
        bad = [f for f in self.fractions if not 0.0 < f <= 1.0]
        if bad:
            raise ConfigError(f"label fractions must lie in (0, 1], got {bad}")
        if not self.encoders and not self.scratch:
            raise ConfigError("nothing to compare: give an encoder artifact or keep the from-scratch baseline")
        for name, path in self.encoders.items():
            if name == "scratch" or not name.isidentifier():
                raise ConfigError(f"encoder name {name!r}: use a plain word other than 'scratch'")
            if not (Path(path) / "artifact.json").is_file():
                raise ConfigError(f"encoder {name}: {path} is not an artifact folder (no artifact.json)")
        if self.control is not None and self.control not in self.encoders:
            raise ConfigError(f"positive control {self.control!r}: not one of the encoders ({', '.join(self.encoders) or 'none given'}); name it with --encoder {self.control}=ARTIFACT")
        if self.control is not None and not self.scratch:
            raise ConfigError(f"positive control {self.control!r}: it is judged against scratch; keep the from-scratch baseline")

    def inits(self) -> list[tuple[str, str | None]]:
        return ([("scratch", None)] if self.scratch else []) + sorted(self.encoders.items())

    def configs(self, task: TaskKind) -> tuple[str, ...]:
        """The ``-c`` values of a run of ``task``, in order: the trainer's, then the task's."""
        return tuple(str(c) for c in (*self.trainer_configs, *self.task_configs.get(task, TASK_CONFIGS[task])))

    def record(self) -> HarnessRecord:
        """The budget and control the report states (``harness.json``)."""
        return HarnessRecord(
            tasks=tuple(str(t) for t in self.tasks),
            inits=tuple(name for name, _ in self.inits()),
            fractions=tuple(float(f) for f in self.fractions),
            seeds=tuple(int(s) for s in self.seeds),
            max_steps=self.max_steps,
            control=self.control,
        )


def run_harness(config: HarnessConfig) -> Path:
    """Run every missing (task, init, fraction, seed); returns the results CSV path."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.csv"
    config.record().write(out / "harness.json")
    rows = read_results(results)
    done = {(r["task"], r["init"], float(r["fraction"]), int(r["seed"])) for r in rows}
    plan = [(t, i, f, s) for t in config.tasks for i in config.inits() for f in config.fractions for s in config.seeds]
    for number, (task, (init, artifact), fraction, seed) in enumerate(plan, 1):
        if (task, init, float(fraction), int(seed)) in done:
            continue
        log.info("run %d/%d: %s, %s, %.0f%% of labelled cases, seed %d", number, len(plan), task, init, 100 * fraction, seed)
        metrics, n_train = _one_run(config, task, init, artifact, fraction, seed)
        for metric, value in sorted(metrics.items()):
            rows.append({"task": task, "init": init, "fraction": fraction, "seed": seed, "train_cases": n_train, "metric": metric, "value": value})
        write_results(results, rows)  # after every run: a killed harness resumes from here
    return results


def finetune_argv(config: HarnessConfig, task: TaskKind, init: str, artifact: str | None, fraction: float, seed: int) -> list[str]:
    """The ``medssl finetune`` arguments of one run: its configs, then the harness's budget,
    then ``extra_args``, then the encoder artifact (none: from scratch)."""
    argv: list[str] = []
    for path in config.configs(task):
        argv += ["-c", path]
    argv += [
        "--data.store", config.store,
        "--data.label_fraction", str(fraction),
        "--data.fraction_seed", str(seed),
        "--data.progress", "false",
        "--seed_everything", str(seed),
        "--trainer.max_steps", str(config.max_steps),
        "--trainer.default_root_dir", str(Path(config.out) / "runs"),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.limit_val_batches", "0",
        "--checkpoint.every_n_train_steps", str(config.max_steps),
        "--run_name", _run_name(task, init, fraction, seed),
        "--resume",  # a run a killed harness left half done continues from its last checkpoint
        *config.extra_args,
    ]
    if artifact is not None:
        argv += ["--model.encoder", str(artifact)]
    return argv


def _one_run(config: HarnessConfig, task: TaskKind, init: str, artifact: str | None, fraction: float, seed: int) -> tuple[dict[str, float], int]:
    cli = build_cli(finetune_argv(config, task, init, artifact, fraction, seed))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.run_start.ckpt_path if cli.run_start else None)
    cli.trainer.limit_val_batches = 1.0
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    metrics = {k: float(v) for k, v in getattr(cli.model, "val_summary", {}).items()}
    if not metrics:
        raise RuntimeError(f"run {_run_name(task, init, fraction, seed)}: the task reported no validation metrics")
    return metrics, len(cli.datamodule.train_cases)


def _run_name(task: TaskKind, init: str, fraction: float, seed: int) -> str:
    return f"{task}-{init}-f{fraction:g}-s{seed}"


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_results(path: Path, rows: list[dict]) -> None:
    lines = [",".join(FIELDS)]
    for r in rows:
        lines.append(",".join(_cell(r[k]) for k in FIELDS))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)
