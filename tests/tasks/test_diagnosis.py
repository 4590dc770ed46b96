"""Diagnosis fine-tuning with guideline text: vocabulary matching, the RAD loss and its weight,
training, validation metrics, export."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from medssl.export.cli import export_checkpoint
from medssl.inference.artifact import load_artifact
from medssl.losses.guideline import guideline_bce_loss, prototype_softmax_loss
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
    for key in ("accuracy", "label_path_accuracy", "guideline_path_accuracy", "guideline_match_accuracy"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert not any("zero_shot" in key for key in summary)  # the projection is trained on labels
    with open(tmp_path / "diagnosis" / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val/guideline_match_accuracy") for r in rows)
    rows = [r for r in rows if r.get("train/guideline")]
    terms = ("train/guideline", "train/classification", "train/classification_label", "train/classification_guideline")
    assert rows and all(math.isfinite(float(r[t])) for r in rows for t in terms)

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


TINY = {"backbone": "resenc3d", "backbone_kwargs": {"channels": [8, 16], "blocks_per_stage": [1, 1], "strides": [2, 2]}}


def _step_terms(model: Diagnosis, batch: dict) -> dict:
    """The loss terms one training step hands to finish_step."""
    seen = {}
    model.finish_step = lambda terms: seen.update(terms) or terms["total"]
    model.training_step(batch, 0)
    return seen


@pytest.mark.parametrize("form", ["rad", "prototype"])
def test_training_step_adds_the_guideline_loss_at_its_weight(tmp_path, form):
    kwargs = {} if form == "rad" else {"guideline_loss": "prototype", "guideline_weight": 0.5, "temperature": 0.07}
    model = Diagnosis(num_classes=2, class_names=["no lesion", "Solid nodule"], text_cache=str(tmp_path), **TINY, **kwargs)
    if form == "rad":  # the reference's defaults
        hp = model.hparams
        assert (hp.guideline_loss, hp.guideline_weight, hp.temperature, hp.negatives_per_positive) == ("rad", 0.1, 2.0, 5)
        assert hp.linear_bypass is False and model.heads["dx"].bypass is None
    torch.manual_seed(0)
    batch = {"image": torch.randn(3, 1, 16, 16, 16), "target": torch.tensor([0, 1, 1])}
    terms = _step_terms(model, batch)
    weight = model.hparams.guideline_weight
    torch.testing.assert_close(terms["total"], terms["classification"] + weight * terms["guideline"])
    torch.testing.assert_close(terms["classification"], terms["classification_label"] + terms["classification_guideline"])
    with torch.no_grad():
        out = model(batch["image"])
    loss = guideline_bce_loss if form == "rad" else prototype_softmax_loss
    expected = loss(out["image_embedding"], out["guideline_embedding"], model.heads["dx"].sentence_class, batch["target"],
                    model.hparams.temperature)  # two classes: every negative scored, nothing drawn
    torch.testing.assert_close(terms["guideline"].detach(), expected)


def test_unknown_guideline_loss_is_refused(tmp_path):
    with pytest.raises(ValueError, match="guideline_loss"):
        Diagnosis(num_classes=2, class_names=["no lesion", "solid nodule"], text_cache=str(tmp_path), guideline_loss="infonce", **TINY)
