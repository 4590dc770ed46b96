"""MedsslCLI and fit_main, on a tiny model: run folder, atomic checkpoints, the k best
checkpoints by a metric, CPU-safe precision, a checked resume path, exit statuses (0, 143
after SIGTERM, argparse's own) and ``--help-all``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger

from medssl.errors import ConfigError
from medssl.training.checkpointing import (
    AtomicCheckpointIO,
    FinalCheckpoint,
    SigtermCheckpoint,
    TolerantCheckpoint,
)
from medssl.training.cli import SIGTERM_EXIT, MedsslCLI, build_cli, fit_main
from medssl.training.fsdp_cpu import CPUFSDPStrategy
from tests.training.tiny import TinyRegression


class TinyCLI(MedsslCLI):
    default_data = "tests.training.tiny.TinyData"


def build(argv: list[str]) -> TinyCLI:
    return build_cli(TinyCLI, TinyRegression, argv, prog="tiny", description="a tiny regression")


def config(tmp_path: Path, max_steps: int = 3, **trainer) -> Path:
    path = tmp_path / "config.yaml"
    data = {
        "model": {"class_path": "tests.training.tiny.TinyRegression"},
        "trainer": {
            "accelerator": "cpu",
            "max_steps": max_steps,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path / "runs"),
            **trainer,
        },
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_cli_builds_a_named_run_with_atomic_checkpoints_and_the_shared_callbacks(tmp_path):
    cli = build(["-c", str(config(tmp_path)), "--run_name", "first"])
    trainer = cli.trainer
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert isinstance(trainer.logger, CSVLogger)
    assert Path(trainer.logger.log_dir) == tmp_path / "runs" / "tinyregression" / "first"
    kinds = {type(c) for c in trainer.callbacks}
    assert {SigtermCheckpoint, FinalCheckpoint} <= kinds
    (saver,) = [c for c in trainer.callbacks if isinstance(c, TolerantCheckpoint)]
    assert (saver._every_n_train_steps, saver.save_top_k, saver.save_last) == (1000, -1, True)


def test_fit_main_trains_and_leaves_last_ckpt_at_the_final_step(tmp_path):
    argv = ["-c", str(config(tmp_path, log_every_n_steps=1)), "--run_name", "r"]
    assert fit_main(build, argv, "tiny") == 0
    run = tmp_path / "runs" / "tinyregression" / "r"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert "train/total" in (run / "metrics.csv").read_text().splitlines()[0]
    assert yaml.safe_load((run / "config.yaml").read_text())["run_name"] == "r"


def test_sigterm_returns_143_with_a_checkpoint_and_the_run_resumes_from_it(tmp_path):
    stopping = config(
        tmp_path,
        max_steps=50,
        callbacks=[
            {"class_path": "tests.training.tiny.SigtermBeforeStep", "init_args": {"step": 1}}
        ],
    )
    assert fit_main(build, ["-c", str(stopping), "--run_name", "r"], "tiny") == SIGTERM_EXIT
    saved = tmp_path / "runs" / "tinyregression" / "r" / "checkpoints" / "sigterm-step=2.ckpt"
    assert torch.load(saved, weights_only=True)["global_step"] == 2

    resumed = build(
        ["-c", str(config(tmp_path, max_steps=4)), "--run_name", "r", "--ckpt_path", str(saved)]
    )
    resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=str(saved))
    assert resumed.trainer.global_step == 4


def test_a_missing_resume_checkpoint_fails_before_anything_is_built(tmp_path):
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        fit_main(
            build, ["-c", str(config(tmp_path)), "--ckpt_path", str(tmp_path / "gone.ckpt")], "tiny"
        )
    assert not (tmp_path / "runs").exists()


def test_mixed_precision_on_a_cpu_falls_back_to_32_bit_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="bf16-mixed needs a GPU; training on the CPU in 32-true"):
        cli = build(["-c", str(config(tmp_path, precision="bf16-mixed"))])
    assert cli.trainer.precision == "32-true"


def test_an_fsdp_strategy_keeps_its_own_checkpoint_io(tmp_path):
    cli = build(
        [
            "-c",
            str(
                config(
                    tmp_path, strategy={"class_path": "medssl.training.fsdp_cpu.CPUFSDPStrategy"}
                )
            ),
        ]
    )
    assert isinstance(
        cli.trainer.strategy, CPUFSDPStrategy
    )  # sharded state is gathered its own way
    assert not isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_help_and_bad_options_return_a_status_instead_of_exiting(capsys):
    assert fit_main(build, ["--help"], "tiny") == 0
    assert "--ckpt_path" in capsys.readouterr().out
    assert fit_main(build, ["--no_such_option", "1"], "tiny") != 0


def test_help_all_is_lightning_clis_full_help(capsys):
    assert fit_main(build, ["--help-all"], "tiny") == 0
    out = capsys.readouterr().out
    for option in ("--trainer.max_steps", "--trainer.val_check_interval", "--checkpoint.save_top_k", "--tracking", "--model.help"):
        assert option in out, option


def scored_run(tmp_path: Path, scores: list[float | None], top_k: int) -> Path:
    """A tiny run of 8 steps validated every 2, whose validations score ``scores``; its checkpoint folder."""
    argv = [
        "-c", str(config(tmp_path, max_steps=8, val_check_interval=2, num_sanity_val_steps=0)),
        "--model", "tests.training.tiny.TinyScored",
        "--model.scores", str(scores).replace("None", "null"),
        "--data", "tests.training.tiny.TinyValData",
        "--checkpoint.monitor", "val/score",
        "--checkpoint.mode", "max",
        "--checkpoint.save_top_k", str(top_k),
        "--checkpoint.every_n_train_steps", "null",
        "--checkpoint.filename", "step={step}-score={val/score:.1f}",
        "--run_name", "r",
    ]  # fmt: skip
    assert fit_main(build, argv, "tiny") == 0
    return tmp_path / "runs" / "tinyscored" / "r" / "checkpoints"


def test_a_monitored_checkpoint_keeps_the_k_best_validations_and_last(tmp_path):
    folder = scored_run(tmp_path, [0.2, 0.9, 0.5, 0.1], top_k=2)
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step=4-score=0.9.ckpt", "step=6-score=0.5.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 8


def test_a_validation_without_the_monitored_metric_ranks_nothing_and_the_run_goes_on(tmp_path, caplog):
    folder = scored_run(tmp_path, [0.2, None, 0.5, None], top_k=3)
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step=2-score=0.2.ckpt", "step=6-score=0.5.ckpt"]
    assert "step 4: no val/score to rank a checkpoint by" in caplog.text
