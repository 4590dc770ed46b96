"""Segmentation fine-tuning end to end on CPU: it learns, validates by sliding window, exports, resumes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from medssl.export.cli import export_checkpoint
from medssl.inference.artifact import load_artifact
from medssl.tasks.cli import build_cli, finetune_main
from medssl.tasks.segmentation import Segmentation

BASE = ["-c", "configs/trainer/cpu.yaml", "-c", "configs/finetune/segmentation.yaml", "-c", "configs/finetune/smoke.yaml"]


def _argv(store, root, steps, *extra):
    return [
        *BASE,
        "--data.store", str(store),
        "--data.progress", "false",
        "--data.structures", "[lung_right, lung_left]",
        "--trainer.max_steps", str(steps),
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.check_val_every_n_epoch", "1000",
        "--run_name", "run",
        *extra,
    ]


def test_cli_links_the_store_classes_into_the_task(labelled_store, tmp_path):
    cli = build_cli(_argv(labelled_store, tmp_path, 1))
    assert isinstance(cli.model, Segmentation)
    assert cli.model.hparams.num_classes == 3
    assert cli.model.label_names() == ["background", "lung_right", "lung_left"]
    assert cli.model.label_values() == [0, 3, 4]  # the store's mask values (ORGAN_LABELS)


def test_segmentation_learns_the_phantom_organs_and_exports_a_predicting_artifact(labelled_store, tmp_path):
    cli = build_cli(_argv(labelled_store, tmp_path, 60, "--model.lr", "3e-3"))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    summary = cli.model.val_summary
    # both lungs of a held-out phantom after 60 CPU steps; telling left from right also shows the
    # default augmentation keeps laterality (a left-right flip would make them one class)
    assert summary["lung_right/dice"] > 0.7 and summary["lung_left/dice"] > 0.7, summary
    assert math.isfinite(summary["hd95"]) and 0.0 <= summary["nsd"] <= 1.0

    ckpt = tmp_path / "segmentation" / "run" / "checkpoints" / "last.ckpt"
    # 60 steps with a save every 50: last.ckpt still holds the weights training ended with
    assert torch.load(ckpt, weights_only=True)["global_step"] == 60
    artifact = load_artifact(export_checkpoint(ckpt, tmp_path / "artifact", store=labelled_store))
    assert artifact.heads["seg"].kind == "segmentation"
    assert artifact.labels == ["background", "lung_right", "lung_left"]
    assert artifact.label_values == [0, 3, 4] and artifact.modalities == ("CT",)
    assert artifact.plan is not None
    meta = json.loads((tmp_path / "artifact" / "artifact.json").read_text())
    assert meta["extra"]["source"]["task"] == "segmentation"
    head, live = artifact.head_state("seg"), cli.model.heads["seg"].state_dict()
    assert set(head) == set(live)
    differ = [k for k, v in live.items() if not torch.equal(head[k], v)]
    assert not differ, differ[:5]


def test_a_2d_encoder_learns_from_axial_slices_and_validates_whole_volumes_slice_by_slice(labelled_store, tmp_path):
    kwargs = '{channels: [8, 16, 32, 64], blocks_per_stage: [1, 1, 1, 1], strides: [2, 2, 2, 2]}'
    cli = build_cli(_argv(labelled_store, tmp_path, 60, "--model.lr", "3e-3", "--model.backbone", "resenc2d",
                          "--model.backbone_kwargs", kwargs, "--data.spatial_dims", "2", "--data.crop_size", "[32, 32]"))  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    case = next(iter(cli.datamodule.val_dataloader()))
    assert case["image"].ndim == 5  # a whole volume, not a slice
    with torch.no_grad():
        logits = cli.model.eval().predict_volume(case["image"])
    assert logits.shape == (1, 3, *case["image"].shape[2:])
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    summary = cli.model.val_summary
    assert summary["lung_right/dice"] > 0.5 and summary["lung_left/dice"] > 0.5, summary


def test_a_frozen_encoder_does_not_move(labelled_store, tmp_path):
    cli = build_cli(_argv(labelled_store, tmp_path, 3, "--model.freeze", "all"))
    before = {k: v.clone() for k, v in cli.model.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in cli.model.heads.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.model.trainable_fraction() == 0.0
    assert all(torch.equal(before[k], v) for k, v in cli.model.encoder.state_dict().items())
    assert any(not torch.equal(head_before[k], v) for k, v in cli.model.heads.state_dict().items())


def test_the_encoder_starts_from_a_pretrained_artifact(labelled_store, tmp_path):
    from medssl.backbones import create_backbone
    from medssl.inference.artifact import save_artifact

    kwargs = {"channels": [8, 16, 32, 64], "blocks_per_stage": [1, 1, 1, 1], "strides": [2, 2, 2, 2]}
    torch.manual_seed(7)
    encoder = create_backbone("resenc3d", **kwargs)
    save_artifact(tmp_path / "pre", backbone_name="resenc3d", backbone_kwargs=kwargs, state_dict=encoder.state_dict())
    cli = build_cli(_argv(labelled_store, tmp_path, 1, "--model.encoder", str(tmp_path / "pre")))
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in cli.model.encoder.state_dict().items())


def test_a_missing_resume_checkpoint_is_an_error(labelled_store, tmp_path):
    from medssl.errors import ConfigError

    with pytest.raises(ConfigError, match="no such checkpoint"):
        finetune_main(_argv(labelled_store, tmp_path, 1, "--ckpt_path", str(tmp_path / "nope.ckpt")))


def test_bad_task_arguments_are_refused():
    with pytest.raises(ValueError, match="num_classes >= 2"):
        Segmentation(num_classes=1)
    with pytest.raises(ValueError, match="background first"):
        Segmentation(num_classes=3, class_names=["liver", "lung"])
    with pytest.raises(ValueError, match="class_values gives each"):
        Segmentation(num_classes=3, class_values=[0, 6])
    with pytest.raises(ValueError, match="background 0 first"):
        Segmentation(num_classes=2, class_values=[6, 0])
    with pytest.raises(ValueError, match="freeze"):
        Segmentation(num_classes=2, freeze="some")


def test_a_finetune_run_validates_its_final_weights_and_the_artifact_records_the_metrics(labelled_store, tmp_path):
    import csv

    # 6 steps, validation every 1000 epochs: no validation would run without the final one
    assert finetune_main(_argv(labelled_store, tmp_path, 6)) == 0
    run = tmp_path / "segmentation" / "run"
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    val_rows = [r for r in rows if r.get("val/dice")]
    assert val_rows and int(val_rows[-1]["step"]) == 6, rows[-1]

    ckpt = run / "checkpoints" / "last.ckpt"
    record = torch.load(ckpt, weights_only=True)["medssl"]
    assert record["metrics"]["step"] == 6
    assert 0.0 <= record["metrics"]["val/dice"] <= 1.0
    artifact = load_artifact(export_checkpoint(ckpt, tmp_path / "artifact", store=labelled_store))
    assert artifact.metrics == record["metrics"]
    assert "val/lung_right/dice" in artifact.metrics
