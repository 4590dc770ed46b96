"""An artifact is refused, cleanly and before anything is allocated, when its record was
edited, is hostile, or does not fit memory (issue 15, item 14).

Reproductions: an edited artifact.json loaded silently; 12,000 channels, 5e7 classes or a
4096x4096x2048 crop ended in raw errors or GiBs of RSS (5e7 classes: 2.2 GB before the
shape error); deep nesting gave RecursionError; a head named '/..' reached the loader; a
truncated checkpoint gave a raw error. An attacker who can write the folder can also reseal
the record, so the size checks are run on resealed records.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
import torch

from medssl.export.checkpoint import ExportError, read_checkpoint
from medssl.inference.artifact import ArtifactError, load_artifact, reseal_artifact, save_artifact
from medssl.inference.artifact_guard import MAX_DEPTH, check_depth
from medssl.inference.model import InferenceModel
from medssl.types import HeadSpec, TaskKind
from tests.inference.artifact_builders import ENCODER_KWARGS, segmentation_artifact


@pytest.fixture
def folder(tmp_path) -> Path:
    return segmentation_artifact(tmp_path / "artifact")


def _meta(folder: Path) -> dict:
    return json.loads((folder / "artifact.json").read_text())


def _build(folder: Path) -> InferenceModel:
    return InferenceModel.from_artifact(load_artifact(folder), "cpu")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_an_edited_record_is_refused_and_a_resealed_one_loads(folder):
    meta = _meta(folder)
    meta["heads"]["seg"]["score_threshold"] = 0.9
    (folder / "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="changed after export"):
        load_artifact(folder)
    reseal_artifact(folder, meta)
    assert load_artifact(folder).meta["heads"]["seg"]["score_threshold"] == 0.9


def test_a_record_without_a_digest_is_refused(folder):
    meta = _meta(folder)
    del meta["artifact_sha256"]
    (folder / "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="no artifact_sha256"):
        load_artifact(folder)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda m: m["backbone"]["kwargs"].update(channels=[12000, 16]), "do not fit backbone"),
        (lambda m: m["heads"]["seg"].update(num_classes=50_000_000), "do not fit segmentation"),
    ],
    ids=["12000-channels", "5e7-classes"],
)
def test_shapes_that_differ_from_the_weights_fail_before_allocating(folder, edit, reason):
    meta = _meta(folder)
    edit(meta)
    reseal_artifact(folder, meta)
    before = _peak_mib()
    with pytest.raises(ArtifactError, match=reason) as refused:
        _build(folder)
    assert "\n" not in str(refused.value)
    assert _peak_mib() - before < 200  # built on the meta device: nothing of that size exists


def test_a_crop_beyond_the_memory_budget_is_refused(folder, monkeypatch):
    monkeypatch.setenv("MEDSSL_MEMORY_BUDGET_GB", "4")
    meta = _meta(folder)
    meta["plan"]["crop_size"] = [4096, 4096, 2048]
    reseal_artifact(folder, meta)
    with pytest.raises(
        ArtifactError, match=r"crop_size 4096x4096x2048 .* memory budget is 4.0 GiB"
    ):
        _build(folder)


def test_a_model_beyond_the_memory_budget_is_refused(folder, monkeypatch):
    monkeypatch.setenv("MEDSSL_MEMORY_BUDGET_GB", "0.01")
    with pytest.raises(ArtifactError, match="GiB for its parameters"):
        _build(folder)


def test_deep_nesting_and_oversized_records_are_refused_without_recursing(folder):
    meta = _meta(folder)
    text = json.dumps(meta)
    (folder / "artifact.json").write_text(
        text[:-1] + ', "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    with pytest.raises(ArtifactError, match=f"nested deeper than {MAX_DEPTH}"):
        load_artifact(folder)
    (folder / "artifact.json").write_text(text + " " * (17 << 20))
    with pytest.raises(ArtifactError, match="at most"):
        load_artifact(folder)


@pytest.mark.parametrize("name", ["/..", "..", "a/b", "a\\b", "x.y", ""])
def test_head_names_that_could_act_as_paths_are_refused(folder, tmp_path, name):
    meta = _meta(folder)
    meta["heads"] = {name: meta["heads"]["seg"]}
    reseal_artifact(folder, meta)
    with pytest.raises(ArtifactError, match="head name"):
        load_artifact(folder)
    encoder = torch.nn.Linear(1, 1)
    with pytest.raises(ArtifactError, match="head name"):
        save_artifact(
            tmp_path / "out",
            backbone_name="resenc3d",
            backbone_kwargs=ENCODER_KWARGS,
            state_dict=encoder.state_dict(),
            heads={name: (HeadSpec(TaskKind.SEGMENTATION, {"num_classes": 2}), {})},
        )


def test_check_depth_skips_brackets_inside_strings():
    assert check_depth('{"a": "[[[[[[[[", "b": [[1]]}') == 3


def test_a_truncated_checkpoint_is_one_clean_export_error(tmp_path):
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"backbone.w": torch.zeros(64)}, "global_step": 3}, whole)
    data = whole.read_bytes()
    for size in (0, 1, 10, len(data) // 3, len(data) // 2, len(data) - 30, len(data) - 1):
        cut = tmp_path / "last.ckpt"
        cut.write_bytes(data[:size])
        with pytest.raises(ExportError, match="not a whole checkpoint") as refused:
            read_checkpoint(cut)
        assert "\n" not in str(refused.value)
