"""VoCo learns on generated anatomy: the online probe rises, well above chance.

CT phantoms (tools.phantom) in a store, the real pretraining data module, a small CNN. The
probe asks which organ a 16^3 crop centres on (6 organs, chance 1/6), with kNN and a linear
probe fitted on half the volumes and tested on the other half.

Default suite: 4 phantoms, a 4-8-16 CNN, 30 steps (~35 s on 2 busy cores). ``slow``: 6 phantoms,
an 8-16-32 CNN, 60 steps (~1 min per form), with the regulariser checked too.

Forms. Default scale: only ``student-bases`` learns within 30 steps. The published forms
(``cvpr``, ``extended``, matched to the authors' code) did not: ``cvpr`` ended at kNN 0.41 /
linear 0.46 (from 0.50 / 0.46), ``extended`` at 0.51 / 0.51, ``student-bases`` at 0.54 /
0.58. Slow scale (from 0.58 / 0.62), two runs differing only in thread timing and the
dropout's generator: ``cvpr`` 0.61 / 0.72 and 0.60 / 0.65, ``extended`` 0.67 / 0.80 and
0.62 / 0.66, ``student-bases`` 0.68 / 0.79 and a pass. The published forms' slow cases are
therefore non-strict xfails. The reference head's BatchNorm starts the loss near its floor
(~0.5-1.6, against ~5 with the earlier LayerNorm head) and the teacher's targets move, so the
loss is no progress measure at the slow scale (it rose for ``extended``); the default-scale
test keeps a 20 % fall for ``student-bases``.

What neither scale can tell: whether the position labels reach the right crops. Training on
labels shuffled between a volume's crops passes both (the probe rises as the features
decollapse); label values are pinned by tests/losses/test_voco.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from lightning.pytorch import Callback, Trainer, seed_everything

from medssl.data.pretrain import PretrainDataModule
from medssl.methods import VoCo
from medssl.training.online_probe import OnlineProbe
from tests.methods.phantom_data import phantom_probe_set, phantom_store

PUBLISHED_FORMS_SLOW = "learns in 60 steps in some runs only (module doc)"


class Losses(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


def train_on_phantoms(
    tmp_path: Path,
    form: str,
    volumes: int,
    steps: int,
    channels: list[int],
) -> tuple[Trainer, Losses, OnlineProbe]:
    """VoCo for ``steps`` steps on ``volumes`` phantoms, probed at step 0, steps/2 and steps."""
    store = phantom_store(tmp_path / "store", n=volumes)
    probe_file = phantom_probe_set(store, crop_size=(16, 16, 16), per_class=10).save(
        tmp_path / "probe.safetensors"
    )
    seed_everything(0)
    model = VoCo(
        backbone="resenc3d",
        backbone_kwargs={"channels": channels, "blocks_per_stage": [1, 1, 1], "strides": [1, 2, 2]},
        grid_size=2, num_random_crops=4, hidden_dim=64, projection_dim=32,
        lr=3e-3, warmup_steps=5, weight_decay=0.01, form=form,
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
    probe = OnlineProbe(str(probe_file), every_n_steps=steps // 2, linear_steps=200)
    losses = Losses()
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe, losses],
    )
    trainer.fit(model, datamodule=data)
    return trainer, losses, probe


def assert_probe_rises(probe: OnlineProbe, steps: int) -> None:
    start, end = probe.history[0], probe.history[-1]
    assert [row["step"] for row in probe.history] == [0, steps // 2, steps]
    # one of the two probes gains 5 points and neither falls: on this machine (AMD EPYC) the
    # default case gains kNN 0.50 -> 0.58 and linear 0.46 -> 0.49, where the CI machine's rounding
    # gave the linear probe the larger gain
    gains = [end[key] - start[key] for key in ("knn_acc", "linear_acc")]
    assert max(gains) >= 0.05 and min(gains) >= 0.0, probe.history
    for key in ("knn_acc", "linear_acc"):
        assert end[key] >= end["chance"] + 0.3, probe.history


@pytest.mark.parametrize("form", ["student-bases"])
def test_voco_loss_falls_and_the_probe_rises_on_a_few_phantoms(tmp_path, form):
    _, losses, probe = train_on_phantoms(tmp_path, form, volumes=4, steps=30, channels=[4, 8, 16])
    first, last = sum(losses.values[:5]) / 5, sum(losses.values[-5:]) / 5
    assert last < 0.8 * first, losses.values
    assert_probe_rises(probe, steps=30)


@pytest.mark.slow  # 6 phantoms, 60 steps, an 8-16-32 CNN: ~1 min per variant on 2 cores
@pytest.mark.parametrize(
    "form",
    [
        pytest.param(form, marks=pytest.mark.xfail(reason=PUBLISHED_FORMS_SLOW, strict=False))
        for form in ("cvpr", "extended")
    ]
    + ["student-bases"],
)
def test_voco_probe_rises_and_the_bases_spread_on_phantoms(tmp_path, form):
    trainer, losses, probe = train_on_phantoms(
        tmp_path, form, volumes=6, steps=60, channels=[8, 16, 32]
    )
    assert all(math.isfinite(v) for v in losses.values)
    assert_probe_rises(probe, steps=60)
    assert (
        float(trainer.callback_metrics["train/regularization"]) < 0.5
    )  # bases no longer collapsed
    assert (tmp_path / "probe.csv").is_file()
