"""Online evaluation: kNN / linear probe metrics, the probe set, and the callback in a real run."""

from __future__ import annotations

import csv
import logging

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from medssl.data.probe_set import ProbeSet
from medssl.training.online_probe import (
    OnlineProbe,
    knn_accuracy,
    linear_probe_accuracy,
    split_by_group,
)
from tests.methods.phantom_data import PROBE_ORGANS, phantom_probe_set, phantom_store
from tests.methods.synthetic import SyntheticCrops, build


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe")
    probe = phantom_probe_set(phantom_store(folder / "store"), crop_size=(16, 16, 8), per_class=6)
    return probe.save(folder / "probe.safetensors")


def clusters(
    n: int, classes: int, spread: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 16, generator=g) * 3
    labels = torch.arange(n) % classes
    return centres[labels] + spread * torch.randn(n, 16, generator=g), labels


def test_probes_are_perfect_on_separated_clusters_and_near_chance_on_noise():
    x, y = clusters(200, 4, spread=0.1)
    xt, yt = clusters(200, 4, spread=0.1, seed=0)
    assert (
        knn_accuracy(x, y, xt, yt) == 1.0 and linear_probe_accuracy(x, y, xt, yt, steps=100) == 1.0
    )
    noise, noise_test = torch.randn(400, 16), torch.randn(400, 16)
    labels = torch.arange(400) % 4
    assert knn_accuracy(noise, labels, noise_test, labels) < 0.4
    assert linear_probe_accuracy(noise, labels, noise_test, labels) < 0.4


def test_split_keeps_each_volume_on_one_side():
    fit, test = split_by_group(torch.tensor([0, 0, 1, 1, 2, 5, 5]))
    assert fit.tolist() == [True, True, False, False, True, False, False] and (fit ^ test).all()
    fit, _ = split_by_group(torch.zeros(4, dtype=torch.long))
    assert fit.tolist() == [True, False, True, False]


def test_phantom_probe_set_round_trips_and_labels_organs(probe_file):
    probe = ProbeSet.load(probe_file)
    assert set(probe.class_names) == set(PROBE_ORGANS)
    assert probe.images.shape[1:] == (1, 16, 16, 8) and probe.images.dtype == torch.float32
    assert probe.groups.unique().tolist() == [0, 1, 2, 3]
    counts = torch.bincount(probe.labels, minlength=len(probe.class_names))
    assert (counts == 4 * 6).all()


def test_callback_logs_every_n_steps_and_writes_the_csv(probe_file, tmp_path, caplog):
    probe = OnlineProbe(str(probe_file), every_n_steps=2, linear_steps=50)
    logger = CSVLogger(tmp_path, name="run")
    trainer = Trainer(
        accelerator="cpu",
        max_steps=4,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe],
    )
    with caplog.at_level(logging.INFO, logger="medssl.probe"):
        trainer.fit(build("voco"), datamodule=SyntheticCrops(num_batches=4))
    assert [row["step"] for row in probe.history] == [0, 2, 4]
    assert all(
        0.0 <= row["knn_acc"] <= 1.0 and 0.0 <= row["linear_acc"] <= 1.0 for row in probe.history
    )
    with open(trainer.log_dir + "/probe.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 2, 4] and set(rows[0]) == {
        "step",
        "knn_acc",
        "linear_acc",
        "chance",
    }
    with open(trainer.log_dir + "/metrics.csv") as f:
        logged = [r for r in csv.DictReader(f) if r.get("probe/knn_acc")]
    assert [int(r["step"]) for r in logged] == [2, 4]
    try:
        import matplotlib  # noqa: F401

        assert (tmp_path / "run" / "version_0" / "probe.png").is_file()
    except ImportError:
        assert "matplotlib is not installed" in caplog.text


def test_probe_without_a_path_is_off():
    assert OnlineProbe(None).probe_set is None
    with pytest.raises(ValueError, match="every_n_steps"):
        OnlineProbe(None, every_n_steps=0)


def test_history_survives_a_checkpoint(probe_file):
    probe = OnlineProbe(str(probe_file))
    probe.history = [{"step": 0, "knn_acc": 0.5, "linear_acc": 0.4, "chance": 0.2}]
    restored = OnlineProbe(str(probe_file))
    restored.load_state_dict(probe.state_dict())
    assert restored.history == probe.history
