"""``medssl pretrain`` (pretrain_main): each shipped config runs on a phantom store, then exports.

    medssl pretrain -c configs/trainer/cpu.yaml -c configs/pretrain/<method>.yaml \\
        -c configs/pretrain/smoke.yaml --data.store STORE --trainer.max_steps 2 ...
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from medssl.export.cli import export_main
from medssl.inference.artifact import load_artifact
from medssl.methods import METHODS
from medssl.methods.cli import build_cli, pretrain_main
from medssl.store.plan import Plan
from tests.methods.phantom_data import phantom_store

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return phantom_store(tmp_path_factory.mktemp("cli") / "store")


# method -> (smoke overlay, backbone of the shipped config, data module of the shipped config)
SHIPPED = {
    "voco": ("smoke", "swin3d", "medssl.data.pretrain.PretrainDataModule"),
    "simclr": ("smoke", "swin3d", "medssl.data.pretrain.PretrainDataModule"),
    "swav": ("smoke", "swin3d", "medssl.data.pretrain.PretrainDataModule"),
    "anatomy": ("smoke", "swin3d", "medssl.data.anatomy_pairs.AnatomyPairDataModule"),
    "joint2d3d": ("smoke2d", "resenc2d", "medssl.data.joint.JointDataModule"),
}


def smoke_args(method: str, store: Path, runs: Path, *extra: str) -> list[str]:
    return [
        "-c", str(CONFIGS / "trainer" / "cpu.yaml"),
        "-c", str(CONFIGS / "pretrain" / f"{method}.yaml"),
        "-c", str(CONFIGS / "pretrain" / f"{SHIPPED[method][0]}.yaml"),
        "--data.store", str(store),
        "--trainer.max_steps", "2",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(runs),
        *extra,
    ]  # fmt: skip


def test_every_registered_method_has_a_shipped_config():
    assert set(SHIPPED) == set(METHODS)
    assert all((CONFIGS / "pretrain" / f"{m}.yaml").is_file() for m in METHODS)


@pytest.mark.parametrize("method", sorted(SHIPPED))
def test_each_config_pretrains_on_a_store_and_exports_with_its_plan(
    method, store, tmp_path, capsys
):
    assert pretrain_main(smoke_args(method, store, tmp_path / "runs")) == 0
    run = tmp_path / "runs" / method / "version_0"
    assert (run / "config.yaml").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    with open(run / "metrics.csv") as f:
        steps = [r for r in csv.DictReader(f) if r.get("train/total")]
    assert len(steps) == 2 and all(
        float(r["train/total"]) == float(r["train/total"]) for r in steps
    )
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["class_path"].lower().endswith(method) and config["data"]["init_args"][
        "store"
    ] == str(store)

    assert (
        export_main([str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "artifact")])
        == 0
    )
    artifact = load_artifact(tmp_path / "artifact")
    assert artifact.plan == Plan.load(store)  # found through the recorded store
    assert (
        artifact.backbone_name == ("resenc2d" if method == "joint2d3d" else "resenc3d")
        and artifact.meta["extra"]["source"]["global_step"] == 2
    )


def test_run_name_fixes_the_run_folder(store, tmp_path):
    cli = build_cli(smoke_args("voco", store, tmp_path / "runs", "--run_name", "demo"))
    assert cli.trainer.log_dir == str(tmp_path / "runs" / "voco" / "demo")


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "fsdp"])
@pytest.mark.parametrize("method", sorted(SHIPPED))
def test_every_trainer_and_method_config_parses(trainer, method, capsys):
    args = [
        "-c",
        str(CONFIGS / "trainer" / f"{trainer}.yaml"),
        "-c",
        str(CONFIGS / "pretrain" / f"{method}.yaml"),
        "--data.store",
        "STORE",
        "--print_config",
    ]
    assert pretrain_main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["backbone"] == SHIPPED[method][1]
    assert printed["data"]["class_path"] == SHIPPED[method][2]
    assert (
        printed["checkpoint"]["every_n_train_steps"] == 1000
        and printed["checkpoint"]["save_last"] is True
    )


def test_help_and_bad_options_return_instead_of_exiting(capsys):
    assert pretrain_main(["--help"]) == 0
    assert "medssl pretrain" in capsys.readouterr().out
    assert pretrain_main(["--model.nonsense", "1"]) != 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for machines without a GPU")
def test_bf16_on_a_cpu_falls_back_to_fp32_with_a_warning(store, tmp_path):
    with pytest.warns(UserWarning, match="needs a GPU; training on the CPU in 32-true"):
        cli = build_cli(
            smoke_args(
                "simclr",
                store,
                tmp_path,
                "--trainer.precision",
                "bf16-mixed",
                "--trainer.accelerator",
                "auto",
            )
        )
    assert cli.trainer.precision == "32-true"
    assert type(cli.trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"


def test_joint2d3d_without_a_backbone_builds_its_2d_default(store, tmp_path):
    """The default ``resenc2d`` is in Joint2D3D's own signature (``--print_config`` of the shipped
    config, which names none, shows it: the parametrized test above), and the CLI builds it."""
    shipped = yaml.safe_load((CONFIGS / "pretrain" / "joint2d3d.yaml").read_text())
    assert "backbone" not in shipped["model"]["init_args"]
    overlay = yaml.safe_load((CONFIGS / "pretrain" / "smoke2d.yaml").read_text())
    del overlay["model"]["init_args"]["backbone"]
    (tmp_path / "smoke2d.yaml").write_text(yaml.safe_dump(overlay))
    args = smoke_args("joint2d3d", store, tmp_path / "runs")
    args[args.index(str(CONFIGS / "pretrain" / "smoke2d.yaml"))] = str(tmp_path / "smoke2d.yaml")
    cli = build_cli(args)
    assert cli.model.hparams.backbone == "resenc2d" and cli.model.backbone.spatial_dims == 2
