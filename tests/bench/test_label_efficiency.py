"""The harness's run arguments: trainer configs, then the task's config list in order, then
the budget every run shares, then extra arguments and the encoder."""

from __future__ import annotations

import pytest

from medssl.bench.label_efficiency import TASK_CONFIGS, HarnessConfig, finetune_argv
from medssl.errors import ConfigError
from medssl.types import TaskKind


def configs_of(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-c"]


def test_each_task_runs_its_config_list_in_order_after_the_trainer_configs(tmp_path):
    config = HarnessConfig(
        store="S",
        out=str(tmp_path),
        tasks=("segmentation", "detection", "classification"),
        trainer_configs=("trainer.yaml",),
        task_configs={"segmentation": ["seg.yaml", "smoke.yaml", "{model: {init_args: {lr: 3.0e-3}}}"], "detection": "det.yaml"},
        extra_args=("--data.batch_size", "4"),
    )
    assert config.task_configs == {TaskKind.SEGMENTATION: ("seg.yaml", "smoke.yaml", "{model: {init_args: {lr: 3.0e-3}}}"), TaskKind.DETECTION: ("det.yaml",)}
    argv = finetune_argv(config, TaskKind.SEGMENTATION, "scratch", None, 0.25, 1)
    assert configs_of(argv) == ["trainer.yaml", "seg.yaml", "smoke.yaml", "{model: {init_args: {lr: 3.0e-3}}}"]
    assert argv[: 2 * 4] == ["-c", "trainer.yaml", "-c", "seg.yaml", "-c", "smoke.yaml", "-c", "{model: {init_args: {lr: 3.0e-3}}}"]
    assert argv[argv.index("--data.label_fraction") + 1] == "0.25" and argv[argv.index("--data.fraction_seed") + 1] == "1"
    assert argv[argv.index("--run_name") + 1] == "segmentation-scratch-f0.25-s1"
    assert argv[-2:] == ["--data.batch_size", "4"] and "--model.encoder" not in argv  # from scratch
    assert configs_of(finetune_argv(config, TaskKind.DETECTION, "scratch", None, 1.0, 0)) == ["trainer.yaml", "det.yaml"]
    default = finetune_argv(config, TaskKind.CLASSIFICATION, "scratch", None, 1.0, 0)
    assert configs_of(default) == ["trainer.yaml", *TASK_CONFIGS[TaskKind.CLASSIFICATION]]


def test_an_encoder_run_names_its_artifact_last(tmp_path):
    config = HarnessConfig(store="S", out=str(tmp_path))
    argv = finetune_argv(config, TaskKind.SEGMENTATION, "voco", "ART", 0.5, 0)
    assert argv[-2:] == ["--model.encoder", "ART"] and argv[argv.index("--run_name") + 1] == "segmentation-voco-f0.5-s0"


def test_config_lists_for_unknown_tasks_or_empty_lists_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown task"):
        HarnessConfig(store="S", out=str(tmp_path), task_configs={"registration": ("r.yaml",)})
    with pytest.raises(ConfigError, match="empty config list"):
        HarnessConfig(store="S", out=str(tmp_path), task_configs={"segmentation": ()})
