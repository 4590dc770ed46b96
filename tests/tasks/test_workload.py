"""``medssl finetune``'s memory planner (medssl.tasks.workload): every shipped task builds on
the meta device from its config, nothing is allocated, and the estimate follows what costs
memory: crop, outputs, freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from medssl.memory import estimate_training
from medssl.tasks.workload import finetune_crop, finetune_workload
from medssl.training.memory_check import DataSettings

ROOT = Path(__file__).resolve().parents[2]
SMOKE = yaml.safe_load((ROOT / "configs/finetune/smoke.yaml").read_text())["model"]["init_args"]
TASKS = {
    "segmentation": "medssl.tasks.segmentation.Segmentation",
    "detection": "medssl.tasks.detection.Detection",
    "classification": "medssl.tasks.diagnosis.Diagnosis",
}


def step_bytes(task: str, store: Path, crop=(32, 32, 32), batch=2, **model) -> int:
    data = DataSettings("medssl.data.finetune.FinetuneDataModule", batch, crop, {"store": str(store), "task": task, "batch_size": batch})
    args = {"backbone": "resenc3d", "backbone_kwargs": SMOKE["backbone_kwargs"], **model}
    with torch.device("meta"):
        network, workload = finetune_workload(TASKS[task], args, data)
    assert all(p.is_meta for p in network.parameters())
    return estimate_training(network, workload, "cpu", baseline=0).terms["activations+grads"]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_is_estimated_and_grows_with_the_crop(task, labelled_store):
    assert 0 < step_bytes(task, labelled_store) < step_bytes(task, labelled_store, crop=(64, 64, 64))


def test_a_frozen_encoder_saves_no_activations(labelled_store):
    assert step_bytes("segmentation", labelled_store, freeze="all") < step_bytes("segmentation", labelled_store)


def test_the_crop_defaults_to_the_plan(labelled_store):
    plan = yaml.safe_load((labelled_store / "plan.json").read_text()) if (labelled_store / "plan.json").exists() else None
    crop = finetune_crop("medssl.data.finetune.FinetuneDataModule", {"store": str(labelled_store)})
    assert len(crop) == 3 and (plan is None or list(crop) == plan["crop_size"])
    assert len(finetune_crop("medssl.data.finetune.FinetuneDataModule", {"store": str(labelled_store), "spatial_dims": 2})) == 2
