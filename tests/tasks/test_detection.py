"""Detection fine-tuning on CPU: losses, whole-volume validation with mAP/FROC, export, learning."""

from __future__ import annotations

import math

import pytest

from medssl.export.cli import export_checkpoint
from medssl.inference.artifact import load_artifact
from medssl.tasks.cli import build_cli
from medssl.tasks.detection import Detection

BASE = ["-c", "configs/trainer/cpu.yaml", "-c", "configs/finetune/detection.yaml", "-c", "configs/finetune/smoke.yaml"]


def _argv(store, root, steps, *extra):
    return [
        *BASE,
        "--data.store", str(store),
        "--data.progress", "false",
        "--trainer.max_steps", str(steps),
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.check_val_every_n_epoch", "1000",
        "--trainer.log_every_n_steps", "1",
        "--run_name", "run",
        *extra,
    ]


def test_detection_trains_validates_and_exports(labelled_store, tmp_path):
    cli = build_cli(_argv(labelled_store, tmp_path, 3))
    model = cli.model
    assert isinstance(model, Detection)
    assert sorted(model.label_names()) == ["lesion_calcified", "lesion_hypodense", "lesion_solid_nodule"]
    optimizer = model.configure_optimizers()["optimizer"]
    ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # the encoder inside the detector is optimised once
    cli.trainer.fit(model, datamodule=cli.datamodule)
    cli.trainer.validate(model, datamodule=cli.datamodule, verbose=False)
    summary = model.val_summary
    assert {"mAP@0.1", "mAP@0.25", "mAP@0.5", "froc_cpm", "sensitivity@1fp"} <= set(summary)
    assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in summary.values())
    artifact = load_artifact(export_checkpoint(tmp_path / "detection" / "run" / "checkpoints" / "last.ckpt", tmp_path / "art", store=labelled_store))
    spec = artifact.heads["det"]
    assert spec.kind == "detection" and spec.num_classes == 3
    assert artifact.labels == model.label_names()
    assert artifact.label_values == [20, 21, 22]  # the lesions' mask values (LESION_VALUES)


def test_bad_detection_arguments(labelled_store):
    with pytest.raises(ValueError, match="num_classes >= 1"):
        Detection(num_classes=0)
    with pytest.raises(ValueError, match="names the 2 box classes"):
        Detection(num_classes=2, class_names=["a"])


def test_the_hard_negative_sampler_settings_reach_the_detector_and_its_spec():
    model = Detection(num_classes=1, samples_per_image=256, positive_fraction=0.1, min_negatives=128)
    sampler, spec = model.heads["det"].fg_bg_sampler, model.head_specs()["det"].kwargs
    assert (sampler.batch_size_per_image, sampler.positive_fraction, sampler.min_neg) == (256, 0.1, 128)
    assert (spec["samples_per_image"], spec["positive_fraction"], spec["min_negatives"]) == (256, 0.1, 128)
    default = Detection(num_classes=1).heads["det"].fg_bg_sampler
    assert (default.batch_size_per_image, default.positive_fraction, default.min_neg) == (64, 0.3, 16)  # MONAI's LUNA16 recipe
