"""``medssl finetune`` derives ``data.task`` from the model's class: a config names the task
once, by its class, and an explicit ``--data.task`` that contradicts it is refused. Its
checkpoints are the k best by the task's headline metric, plus last.ckpt."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medssl.data.finetune import FinetuneDataModule
from medssl.tasks.base import FinetuneTask
from medssl.tasks.cli import FinetuneCLI, data_task, rank_checkpoints
from medssl.training.cli import build_cli
from medssl.types import TaskKind

ROOT = Path(__file__).resolve().parents[2]


class _Parsed(Exception):
    def __init__(self, config) -> None:
        super().__init__("parsed")
        self.config = config


class _ParseOnly(FinetuneCLI):
    """The finetune CLI up to its parsed config (links applied), before anything is built."""

    def before_instantiate_classes(self) -> None:
        raise _Parsed(self.config)


def parse(*argv: str):
    argv = ("-c", str(ROOT / "configs/trainer/cpu.yaml"), "--data.store", "/nonexistent", *argv)
    with pytest.raises(_Parsed) as parsed:
        build_cli(_ParseOnly, FinetuneTask, list(argv), "medssl finetune", "parse only")
    return parsed.value.config


@pytest.mark.parametrize("task", list(TaskKind), ids=str)
def test_the_data_module_gets_the_task_of_the_model_class(task, labelled_store):
    config = parse("-c", str(ROOT / f"configs/finetune/{task}.yaml"))
    assert config.data.init_args.task == task
    init_args = {**config.data.init_args.as_dict(), "store": str(labelled_store), "progress": False}
    assert FinetuneDataModule(**init_args).task == task


def test_an_explicit_data_task_must_agree_with_the_model(capsys):
    detection = ("-c", str(ROOT / "configs/finetune/detection.yaml"))
    assert parse(*detection, "--data.task", "detection").data.init_args.task == TaskKind.DETECTION
    with pytest.raises(SystemExit) as exit_:
        parse(*detection, "--data.task", "segmentation")
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "data.task 'segmentation' contradicts the model medssl.tasks.detection.Detection" in error


def test_a_class_without_a_task_kind_is_refused():
    assert data_task("medssl.tasks.diagnosis.Diagnosis") == "classification"
    with pytest.raises(ValueError, match="sets no task kind"):
        data_task("medssl.tasks.base.FinetuneTask")


def test_configs_set_no_data_task_and_trainer_files_no_data_options():
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        data = config.get("data") or {}
        assert "task" not in data and "task" not in (data.get("init_args") or {}), path
        if path.parent.name == "trainer":
            assert "data" not in config, path


HEADLINES = {TaskKind.SEGMENTATION: "val/dice", TaskKind.DETECTION: "val/froc_cpm", TaskKind.CLASSIFICATION: "val/auroc"}


@pytest.mark.parametrize("task", list(TaskKind), ids=str)
def test_checkpoints_rank_by_the_tasks_headline_metric_at_each_validation(task):
    config = parse("-c", str(ROOT / f"configs/finetune/{task}.yaml"))
    assert config.trainer.val_check_interval == 1000 and config.checkpoint.every_n_train_steps is None
    rank_checkpoints(config.checkpoint, config.model.class_path)
    saver = config.checkpoint
    assert (saver.monitor, saver.mode, saver.save_top_k, saver.save_last) == (HEADLINES[task], "max", 3, True)
    assert saver.filename == f"step={{step}}-{HEADLINES[task][4:]}={{{HEADLINES[task]}:.4f}}"


def test_periodic_checkpoints_or_an_own_monitor_are_left_as_configured():
    segmentation = ("-c", str(ROOT / "configs/finetune/segmentation.yaml"))
    periodic = parse(*segmentation, "--checkpoint.every_n_train_steps", "100")
    rank_checkpoints(periodic.checkpoint, periodic.model.class_path)
    assert periodic.checkpoint.monitor is None and periodic.checkpoint.save_top_k == -1  # each one kept
    own = parse(*segmentation, "--checkpoint.monitor", "val/nsd")
    rank_checkpoints(own.checkpoint, own.model.class_path)
    assert (own.checkpoint.monitor, own.checkpoint.filename) == ("val/nsd", "step={step}")
