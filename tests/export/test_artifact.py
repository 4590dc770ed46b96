"""The artifact contract: what is written, what loading checks, and that it never unpickles."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medssl.inference.artifact import (
    ARTIFACT_FORMAT,
    ArtifactError,
    load_artifact,
    reseal_artifact,
    save_artifact,
)
from medssl.store.plan import Plan
from medssl.types import HeadSpec, TaskKind

ROOT = Path(__file__).resolve().parents[2]


def tiny_state() -> dict[str, torch.Tensor]:
    return {
        "stem.weight": torch.randn(4, 1, 3, 3, 3),
        "stem.bias": torch.zeros(4),
        "steps": torch.tensor([3], dtype=torch.int64),
    }


def save(out: Path, **kwargs) -> Path:
    args = {
        "backbone_name": "resenc3d",
        "backbone_kwargs": {"channels": [4, 8]},
        "state_dict": tiny_state(),
        **kwargs,
    }
    return save_artifact(out, **args)


def test_round_trip_keeps_tensors_and_records_everything(tmp_path):
    state = tiny_state()
    spec = HeadSpec(TaskKind.CLASSIFICATION, {"num_classes": 3})
    weights = {"weight": torch.randn(3, 4)}
    plan = Plan(target_spacing=(1.0, 1.0, 2.0), crop_size=(64, 64, 32), crop_size_2d=(64, 64))
    out = save_artifact(
        tmp_path / "a",
        backbone_name="resenc3d",
        backbone_kwargs={"channels": [4, 8]},
        state_dict=state,
        heads={"dx": (spec, weights)},
        plan=plan,
        labels=["no", "yes", "maybe"],
        metrics={"knn_acc": 0.8},
        extra={"note": "x"},
    )
    assert sorted(p.name for p in out.iterdir()) == ["artifact.json", "model.safetensors"]
    meta = json.loads((out / "artifact.json").read_text())
    assert meta["format"] == ARTIFACT_FORMAT == 1
    assert (
        meta["weights_sha256"]
        == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    )
    assert meta["backbone"] == {"name": "resenc3d", "kwargs": {"channels": [4, 8]}}
    assert meta["heads"] == {"dx": {"kind": "classification", "num_classes": 3}} and meta["labels"] == [
        "no",
        "yes",
        "maybe",
    ]
    assert meta["created_at"].endswith("+00:00") and meta["medssl_version"]
    artifact = load_artifact(out)
    assert artifact.backbone_state.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(artifact.backbone_state[k], v)
    assert torch.equal(artifact.head_state("dx")["weight"], weights["weight"])
    assert artifact.plan == plan and artifact.metrics == {"knn_acc": 0.8}
    assert artifact.heads == {"dx": spec}
    assert load_artifact(out / "artifact.json").meta == artifact.meta


def test_head_records_and_plan_as_older_medssl_wrote_them_are_read_typed(tmp_path):
    out = save(tmp_path / "a")
    meta = json.loads((out / "artifact.json").read_text())
    plan = Plan(target_spacing=(1.0, 1.0, 2.0), crop_size=(64, 64, 32), crop_size_2d=(64, 64))
    meta["plan"] = json.loads(plan.to_json())
    meta["heads"] = {"seg": {"kind": "segmentation", "num_classes": 2, "deep_supervision": False}}
    reseal_artifact(out, meta)
    artifact = load_artifact(out)
    assert artifact.heads == {"seg": HeadSpec(TaskKind.SEGMENTATION, {"num_classes": 2, "deep_supervision": False})}
    assert artifact.heads["seg"].to_json() == meta["heads"]["seg"] and artifact.plan == plan


def test_an_unknown_head_kind_or_a_broken_plan_is_refused_on_use(tmp_path):
    out = save(tmp_path / "a")
    meta = json.loads((out / "artifact.json").read_text())
    meta["heads"] = {"dx": {"kind": "linear", "classes": 3}}
    meta["plan"] = {"version": 1, "crop_size": [64, 64, 32]}
    reseal_artifact(out, meta)
    artifact = load_artifact(out)
    with pytest.raises(ArtifactError, match="head 'dx': head kind 'linear'"):
        _ = artifact.heads
    with pytest.raises(ArtifactError, match="plan unusable"):
        _ = artifact.plan


class _TouchOnUnpickle:
    """A pickle that creates a file when loaded: the side effect an unpickling loader would have."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("digest_updated", [False, True], ids=["digest-mismatch", "digest-forged"])
def test_a_pickle_posing_as_the_weights_is_refused_without_running_it(tmp_path, digest_updated):
    out = save(tmp_path / "a")
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"backbone.stem.weight": _TouchOnUnpickle(marker)})
    (out / "model.safetensors").write_bytes(payload)
    if digest_updated:  # whoever swapped the weights also rewrote the digest
        meta = json.loads((out / "artifact.json").read_text())
        meta["weights_sha256"] = hashlib.sha256(payload).hexdigest()
        (out / "artifact.json").write_text(json.dumps(meta))
    match = "not a safetensors file" if digest_updated else "sha256 .* differs from the recorded"
    with pytest.raises(ArtifactError, match=match):
        load_artifact(out)
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: unpickling it does create the marker
    assert marker.exists()


def test_truncated_weights_unknown_format_and_missing_files_are_refused(tmp_path):
    out = save(tmp_path / "a")
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(out)
    out = save(tmp_path / "b")
    meta = json.loads((out / "artifact.json").read_text())
    (out / "artifact.json").write_text(json.dumps({**meta, "format": 2}))
    with pytest.raises(ArtifactError, match="format 2; this medssl reads format 1 only"):
        load_artifact(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="expected artifact.json and model.safetensors"):
        load_artifact(out)


def test_non_finite_weights_and_non_json_values_are_not_written(tmp_path):
    bad = tiny_state()
    bad["stem.bias"][0] = float("nan")
    with pytest.raises(ArtifactError, match="non-finite"):
        save(tmp_path / "a", state_dict=bad)
    with pytest.raises(ArtifactError, match="plain JSON"):
        save(tmp_path / "b", metrics={"acc": torch.tensor(0.5)})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "model.safetensors").exists()


def test_rewriting_an_artifact_replaces_both_files(tmp_path):
    out = save(tmp_path / "a")
    first = load_artifact(out).meta["weights_sha256"]
    save(out)
    assert load_artifact(out).meta["weights_sha256"] != first
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_the_artifact_module_imports_neither_methods_nor_lightning():
    code = "import sys, medssl.inference.artifact; print(sorted(m for m in sys.modules if m.startswith(('lightning', 'medssl.methods', 'medssl.backbones', 'pytorch_lightning'))))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
