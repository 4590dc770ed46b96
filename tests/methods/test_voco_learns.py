"""VoCo learns on generated anatomy: its loss falls and the online probe rises, well above chance.

Six CT phantoms (tools.phantom) in a store, the real pretraining data module, a small CNN,
60 steps on the CPU (~20 s). The probe asks which organ a 16^3 crop centres on (6 organs,
chance 1/6), with kNN and a linear probe fitted on 3 volumes and tested on the other 3.
"""

from __future__ import annotations

import pytest

from lightning.pytorch import Callback, Trainer, seed_everything

from medssl.data.pretrain import PretrainDataModule
from medssl.methods import VoCo
from medssl.methods.online_probe import OnlineProbe
from tests.methods.phantom_data import phantom_probe_set, phantom_store

STEPS = 60


class Losses(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


@pytest.mark.parametrize("ema_momentum", [None, 0.99], ids=["cvpr", "ema-teacher"])
def test_voco_loss_falls_and_the_probe_rises_on_phantoms(tmp_path, ema_momentum):
    store = phantom_store(tmp_path / "store", n=6)
    probe_file = phantom_probe_set(store, crop_size=(16, 16, 16), per_class=10).save(
        tmp_path / "probe.safetensors"
    )
    seed_everything(0)
    model = VoCo(
        backbone="resenc3d",
        backbone_kwargs={"channels": [8, 16, 32], "blocks_per_stage": [1, 1, 1], "strides": [1, 2, 2]},
        grid_size=2, num_random_crops=4, hidden_dim=64, projection_dim=32,
        lr=3e-3, warmup_steps=5, weight_decay=0.01, ema_momentum=ema_momentum,
    )  # fmt: skip
    data = PretrainDataModule(
        str(store),
        crop_size=(32, 32, 16),
        crops_per_volume=2,
        batch_size=2,
        num_workers=0,
        views=0,
        val_fraction=0.0,
        samples_per_epoch=20,
        progress=False,
    )
    probe, losses = (
        OnlineProbe(str(probe_file), every_n_steps=STEPS // 2, linear_steps=200),
        Losses(),
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=STEPS,
        logger=False,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe, losses],
    )
    trainer.fit(model, datamodule=data)

    first, last = sum(losses.values[:10]) / 10, sum(losses.values[-10:]) / 10
    assert last < 0.5 * first, losses.values
    assert (
        float(trainer.callback_metrics["train/regularization"]) < 0.5
    )  # bases no longer collapsed
    start, end = probe.history[0], probe.history[-1]
    assert [row["step"] for row in probe.history] == [0, STEPS // 2, STEPS]
    assert end["linear_acc"] >= start["linear_acc"] + 0.05, probe.history
    assert end["knn_acc"] >= start["knn_acc"], probe.history
    for key in ("knn_acc", "linear_acc"):
        assert end[key] >= end["chance"] + 0.3, probe.history
    assert (tmp_path / "probe.csv").is_file()
