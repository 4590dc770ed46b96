"""Diagnosis fine-tuning with guideline text: vocabulary matching, training, validation metrics, export."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from medssl.export.cli import export_checkpoint
from medssl.inference.artifact import load_artifact
from medssl.tasks.cli import build_cli
from medssl.tasks.diagnosis import Diagnosis, name_key
from tests.data.labelled_store import default_cases, write_labelled_store

BASE = ["-c", "configs/trainer/cpu.yaml", "-c", "configs/finetune/classification.yaml", "-c", "configs/finetune/smoke.yaml"]
KINDS = [c.kinds[0] for c in default_cases()]  # the lesion kind each phantom holds


@pytest.fixture(scope="module")
def dx_store(tmp_path_factory):
    # classes spelled as a hospital table might spell them; the guideline YAML uses snake_case
    classes = [[k.replace("_", " ").title()] for k in KINDS]
    return write_labelled_store(tmp_path_factory.mktemp("dx") / "store", classes=classes)


def _argv(store, root, steps, *extra):
    return [
        *BASE,
        "--data.store", str(store),
        "--data.progress", "false",
        "--model.text_cache", str(root / "text-cache"),
        "--trainer.max_steps", str(steps),
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.check_val_every_n_epoch", "1000",
        "--run_name", "run",
        *extra,
    ]


def test_names_match_ignoring_case_spaces_and_hyphens():
    assert name_key("Solid nodule") == name_key("solid_nodule") == name_key("solid-nodule ")


def test_diagnosis_trains_validates_and_exports_its_guidelines(dx_store, tmp_path):
    cli = build_cli(_argv(dx_store, tmp_path, 4, "--trainer.log_every_n_steps", "1"))
    model = cli.model
    assert isinstance(model, Diagnosis)
    assert sorted(map(name_key, model.label_names())) == sorted(set(KINDS))
    dx = model.heads["dx"]
    assert dx.num_sentences == len(model.guideline_texts) > len(set(KINDS))
    assert set(dx.sentence_class.tolist()) == set(range(model.hparams.num_classes))  # every class has text
    cli.trainer.fit(model, datamodule=cli.datamodule)
    cli.trainer.validate(model, datamodule=cli.datamodule, verbose=False)
    summary = model.val_summary
    assert 0.0 <= summary["accuracy"] <= 1.0 and 0.0 <= summary["zero_shot_accuracy"] <= 1.0
    with open(tmp_path / "diagnosis" / "run" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/guideline")]
    assert rows and all(math.isfinite(float(r["train/guideline"])) and math.isfinite(float(r["train/classification"])) for r in rows)

    artifact = load_artifact(export_checkpoint(tmp_path / "diagnosis" / "run" / "checkpoints" / "last.ckpt", tmp_path / "art", store=dx_store))
    assert artifact.heads["dx"].kind == "classification"
    guidelines = artifact.meta["extra"]["guidelines"]
    assert guidelines["texts"] == model.guideline_texts and len(guidelines["sentence_class"]) == dx.num_sentences
    state = artifact.head_state("dx")
    assert torch.equal(state["sentence_class"], dx.sentence_class)  # the server needs no text model


def test_a_class_without_guideline_text_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"no text for classes \['pneumothorax'\]"):
        Diagnosis(num_classes=2, class_names=["solid nodule", "pneumothorax"], text_cache=str(tmp_path), backbone="resenc3d",
                  backbone_kwargs={"channels": [8, 16], "blocks_per_stage": [1, 1], "strides": [2, 2]})
