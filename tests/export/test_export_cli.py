"""``medssl export``: checkpoint -> artifact -> rebuilt encoder with identical outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from medssl.export import read_checkpoint
from medssl.export.checkpoint import ExportError
from medssl.export.cli import export_main
from medssl.inference.artifact import load_artifact
from medssl.inference.encoder import build_encoder
from medssl.store.plan import Plan
from tests.methods.synthetic import CROPS, SyntheticCrops, build


def train_checkpoint(
    folder: Path, method: str = "voco", backbone: str = "resenc3d"
) -> tuple[Path, object]:
    model = build(method, backbone)
    dims = model.backbone.spatial_dims
    checkpoints = ModelCheckpoint(dirpath=folder, save_last=True)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoints],
    )
    trainer.fit(
        model,
        datamodule=SyntheticCrops(crop_size=CROPS[dims], views=2 if method == "simclr" else 0),
    )
    return folder / "last.ckpt", model


def write_plan(store: Path) -> Plan:
    store.mkdir()
    plan = Plan(target_spacing=(1.5, 1.5, 3.0), crop_size=(64, 64, 32), crop_size_2d=(128, 128))
    plan.save(store)
    return plan


@pytest.mark.parametrize(
    ("method", "backbone"), [("voco", "resenc3d"), ("swav", "vit3d"), ("simclr", "resenc2d")]
)
def test_exported_encoder_gives_identical_outputs(tmp_path, method, backbone, capsys):
    checkpoint, model = train_checkpoint(tmp_path / "ckpt", method, backbone)
    plan = write_plan(tmp_path / "store")
    assert (
        export_main(
            [
                str(checkpoint),
                "--out",
                str(tmp_path / "artifact"),
                "--store",
                str(tmp_path / "store"),
            ]
        )
        == 0
    )
    assert "plan included" in capsys.readouterr().out
    artifact = load_artifact(tmp_path / "artifact")
    assert artifact.plan == plan
    assert (
        artifact.meta["extra"]["source"]["global_step"] == 2
        and artifact.meta["extra"]["source"]["method"] == type(model).__name__
    )
    encoder = build_encoder(artifact)
    x = torch.randn(3, 1, *CROPS[model.backbone.spatial_dims])
    model.backbone.eval()
    with torch.no_grad():
        assert torch.equal(encoder(x), model.backbone(x))
        for a, b in zip(encoder.forward_features(x), model.backbone.forward_features(x)):
            assert torch.equal(a, b)


def test_a_checkpoint_without_the_medssl_record_falls_back_to_hparams(tmp_path):
    checkpoint, model = train_checkpoint(tmp_path / "ckpt")
    data = torch.load(checkpoint, weights_only=True)
    del data["medssl"]
    torch.save(data, tmp_path / "old.ckpt")
    contents = read_checkpoint(tmp_path / "old.ckpt")
    assert (
        contents.backbone_name == "resenc3d"
        and contents.backbone_state.keys() == model.backbone.state_dict().keys()
    )
    assert export_main([str(tmp_path / "old.ckpt"), "--out", str(tmp_path / "a"), "--no-plan"]) == 0
    assert load_artifact(tmp_path / "a").plan is None


class Opaque:  # a class torch.load(weights_only=True) refuses to rebuild
    pass


def test_unreadable_foreign_or_missing_checkpoints_are_refused(tmp_path):
    with pytest.raises(ExportError, match="no such file"):
        export_main([str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "a")])
    torch.save({"state_dict": {}, "extra": Opaque()}, tmp_path / "pickled.ckpt")
    with pytest.raises(ExportError, match="not a readable weights-only checkpoint"):
        export_main([str(tmp_path / "pickled.ckpt"), "--out", str(tmp_path / "a")])
    torch.save({"state_dict": {"net.weight": torch.zeros(2)}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ExportError, match="was it written by medssl pretrain"):
        export_main([str(tmp_path / "foreign.ckpt"), "--out", str(tmp_path / "a")])
    checkpoint, _ = train_checkpoint(tmp_path / "ckpt")
    data = torch.load(checkpoint, weights_only=True)
    data["medssl"]["backbone_kwargs"]["channels"] = [4, 8, 32]
    torch.save(data, tmp_path / "mismatch.ckpt")
    with pytest.raises(ExportError, match="do not rebuild backbone"):
        export_main([str(tmp_path / "mismatch.ckpt"), "--out", str(tmp_path / "a")])
    assert not (tmp_path / "a").exists()
