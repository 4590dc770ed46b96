"""``medssl bench probe``: exported encoders (3D and joint 2D/3D) probed on one probe set."""

from __future__ import annotations

import csv

import pytest
import torch

from medssl.backbones import create_backbone
from medssl.backbones.slice_stack import SliceAggregator
from medssl.bench.cli import bench_main
from medssl.bench.probe import compare_encoders, embed, probe_scores
from medssl.data.probe_set import ProbeSet
from medssl.errors import ConfigError
from medssl.inference.artifact import load_artifact, save_artifact
from medssl.inference.encoder import build_encoder

KW3D = {"channels": [4, 8], "blocks_per_stage": [1, 1], "strides": [1, 2]}
KW2D = {"channels": [4, 8], "blocks_per_stage": [1, 1], "strides": [1, 2]}


def probe_set(path, separable: bool = True) -> ProbeSet:
    """4 volumes x 2 classes x 6 crops [1, 8, 8, 4] of noise; class 1 adds a bright corner block."""
    g = torch.Generator().manual_seed(0)
    images, labels, groups = [], [], []
    for volume in range(4):
        for label in (0, 1):
            for _ in range(6):
                image = torch.randn(1, 8, 8, 4, generator=g)
                if separable and label:
                    image[:, :4, :4] += 4.0
                images.append(image)
                labels.append(label if separable else int(torch.randint(2, (1,), generator=g)))
                groups.append(volume)
    probe = ProbeSet(torch.stack(images), torch.tensor(labels), torch.tensor(groups), ("a", "b"))
    probe.save(path)
    return probe


def artifact_3d(folder, seed=1):
    torch.manual_seed(seed)
    encoder = create_backbone("resenc3d", **KW3D)
    return save_artifact(folder, backbone_name="resenc3d", backbone_kwargs=KW3D, state_dict=encoder.state_dict())


def artifact_joint(folder):
    torch.manual_seed(2)
    encoder = create_backbone("resenc2d", **KW2D)
    aggregator = SliceAggregator(encoder.num_features, depth=1, num_heads=2)
    spec = {"dim": encoder.num_features, "depth": 1, "num_heads": 2, "num_slices": 4, "slice_axis": 2}
    return save_artifact(
        folder,
        backbone_name="resenc2d",
        backbone_kwargs=KW2D,
        state_dict=encoder.state_dict(),
        aggregator=(spec, aggregator.state_dict()),
    )


def test_rows_are_the_probe_of_each_encoder_and_scratch_has_the_same_shape(tmp_path):
    probe = probe_set(tmp_path / "p.safetensors")
    a3, aj = artifact_3d(tmp_path / "a3"), artifact_joint(tmp_path / "aj")
    rows = compare_encoders(tmp_path / "p.safetensors", {"voco": a3, "joint": aj}, scratch_seeds=(0, 1), linear_steps=50)
    assert [r["init"] for r in rows] == ["voco", "joint"] + ["scratch (voco architecture)"] * 2 + ["scratch (joint architecture)"] * 2

    # the encoder row is exactly the online probe's measurement on that encoder's features
    features = embed(build_encoder(load_artifact(a3)), probe.images)
    expected = probe_scores(features, probe, linear_steps=50)
    assert {k: rows[0][k] for k in expected} == expected
    assert rows[0]["fit_crops"] == rows[0]["test_crops"] == 24  # volumes 0, 2 fit; 1, 3 test

    # the joint artifact embeds 3D crops as volumes through its slice aggregator
    volume_encoder = build_encoder(load_artifact(aj), volume=True)
    assert embed(volume_encoder, probe.images).shape == (48, volume_encoder.num_features)

    # crops with and without a bright block are told apart by both (seeded) encoders; the
    # same encoder probes near chance when labels are unrelated to the image (next test)
    assert all(r["knn_acc"] >= 0.9 for r in rows[:2]) and all(r["chance"] == 0.5 for r in rows)


def test_scratch_is_freshly_initialised_not_the_artifact_weights(tmp_path):
    a3 = load_artifact(artifact_3d(tmp_path / "a3"))
    trained = build_encoder(a3).state_dict()
    torch.manual_seed(0)
    fresh = build_encoder(a3, weights=False).state_dict()
    assert trained.keys() == fresh.keys()
    assert not all(torch.equal(trained[k], fresh[k]) for k in trained if trained[k].is_floating_point())


def test_labels_unrelated_to_the_image_probe_near_chance(tmp_path):
    probe_set(tmp_path / "p.safetensors", separable=False)
    rows = compare_encoders(tmp_path / "p.safetensors", {"voco": artifact_3d(tmp_path / "a3")}, scratch=False, linear_steps=50)
    assert len(rows) == 1 and rows[0]["knn_acc"] <= 0.75


def test_cli_writes_csv_and_table(tmp_path, capsys):
    probe_set(tmp_path / "p.safetensors")
    a3 = artifact_3d(tmp_path / "a3")
    argv = ["probe", "--probe-set", str(tmp_path / "p.safetensors"), "--out", str(tmp_path / "out"),
            "--encoder", f"voco={a3}", "--scratch-seeds", "0", "1", "2", "--linear-steps", "20"]  # fmt: skip
    assert bench_main(argv) == 0
    with open(tmp_path / "out" / "probe.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["init"] for r in rows] == ["voco", "scratch", "scratch", "scratch"]
    table = (tmp_path / "out" / "probe.md").read_text()
    assert f"| voco | {float(rows[0]['knn_acc']):.3f} | {float(rows[0]['linear_acc']):.3f} | 0.500 | 24 |" in table
    assert "| scratch |" in table and "(n=3)" in table
    assert "| scratch |" in capsys.readouterr().out


def test_nothing_to_compare_is_an_error(tmp_path):
    probe_set(tmp_path / "p.safetensors")
    with pytest.raises(ConfigError, match="at least one"):
        compare_encoders(tmp_path / "p.safetensors", {}, scratch=False)
    with pytest.raises(ConfigError, match="architecture"):
        compare_encoders(tmp_path / "p.safetensors", {}, scratch=True)
