"""The shared base: EMA as a function, warm-up + cosine schedule, the non-finite guard, and
the check of a method's view source against the data module's ``views``."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from medssl.errors import ConfigError, MedsslError
from medssl.methods import METHODS, NonFiniteLossError, SimCLR, ema_update, warmup_cosine
from medssl.methods.base import check_view_source
from medssl.training.checkpointing import AtomicCheckpointIO
from medssl.types import ViewSource
from tests.methods.synthetic import TINY_BACKBONES, TINY_HEADS, SyntheticCrops, build


def test_ema_update_moves_parameters_and_copies_buffers():
    student, teacher = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        student.weight.fill_(2.0), teacher.weight.fill_(0.0)
        student.running_mean.fill_(5.0)
    ema_update(teacher, student, momentum=0.75)
    torch.testing.assert_close(teacher.weight, torch.full((3,), 0.5))
    torch.testing.assert_close(teacher.running_mean, torch.full((3,), 5.0))
    ema_update(teacher, student, momentum=1.0)
    torch.testing.assert_close(teacher.weight, torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="momentum"):
        ema_update(teacher, student, momentum=1.5)
    with pytest.raises(ValueError, match="parameters"):
        ema_update(nn.Linear(2, 2), nn.Linear(2, 2, bias=False), 0.9)


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    values = [warmup_cosine(s, 4, 14, 0.1) for s in range(16)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == 1.0 and math.isclose(values[9], 0.55) and math.isclose(values[14], 0.1)
    assert all(a >= b for a, b in pairwise(values[4:]))
    assert warmup_cosine(100, 0, math.inf, 0.1) == 1.0


def test_optimizer_decays_weights_but_not_biases_or_norms():
    model = build("simclr", weight_decay=0.3)
    model.trainer = None
    optimizer = model.configure_optimizers()["optimizer"]
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.3 and all(p.ndim >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim < 2 for p in plain["params"])


class NaNAtStep(SyntheticCrops):
    """Crops turn NaN at one global step (a corrupt volume in the middle of a run)."""

    def __init__(self, step: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_step = step

    def on_after_batch_transfer(self, batch, dataloader_idx):
        if self.trainer.global_step == self.nan_step:
            batch = {**batch, "image": torch.full_like(batch["image"], float("nan"))}
        return batch


def all_finite(checkpoint: dict) -> bool:
    tensors = list(checkpoint["state_dict"].values())
    for state in checkpoint["optimizer_states"]:
        for per_param in state["state"].values():
            tensors += [v for v in per_param.values() if torch.is_tensor(v)]
    return all(bool(torch.isfinite(t.float()).all()) for t in tensors)


@pytest.mark.parametrize("method", ["voco", "simclr", "swav"])
def test_nan_loss_stops_the_run_naming_the_step_and_no_checkpoint_is_non_finite(method, tmp_path):
    model = build(method, freeze_prototypes_steps=0) if method == "swav" else build(method)
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, save_last=True, filename="{step}"
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=6,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoints],
        plugins=[AtomicCheckpointIO()],
    )
    with pytest.raises(
        NonFiniteLossError, match=r"step 3: loss is not finite \(.*total=nan"
    ) as error:
        trainer.fit(model, datamodule=NaNAtStep(3, num_batches=8))
    assert isinstance(error.value, MedsslError)
    files = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert files == ["last.ckpt", "step=1.ckpt", "step=2.ckpt", "step=3.ckpt"]
    for path in tmp_path.glob("*.ckpt"):
        assert all_finite(torch.load(path, weights_only=True)), path.name
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_nan_gradient_stops_before_the_optimizer_step():
    model = build("simclr")
    weight = next(model.backbone.parameters())
    weight.register_hook(lambda grad: grad * float("nan"))
    before = weight.detach().clone()
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(NonFiniteLossError, match="step 0: non-finite gradient .*backbone"):
        trainer.fit(model, datamodule=SyntheticCrops(views=2))
    assert torch.equal(weight.detach(), before)


def quiet_trainer() -> Trainer:
    return Trainer(
        accelerator="cpu",
        fast_dev_run=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


class NeedsDataViews(SimCLR):
    """A method that only takes the data module's views (no current method does)."""

    view_source = ViewSource.DATA_MODULE


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_declares_where_its_views_come_from(method):
    assert isinstance(METHODS[method].view_source, ViewSource)


def test_a_method_that_cuts_its_own_views_refuses_a_data_module_that_makes_views():
    with pytest.raises(ConfigError, match=r"VoCo cuts its own.*SyntheticCrops makes data.views=2.*set data.views to 0"):
        quiet_trainer().fit(build("voco"), datamodule=SyntheticCrops(views=2))
    quiet_trainer().fit(build("voco"), datamodule=SyntheticCrops(views=0))


def test_a_method_that_needs_the_data_modules_views_refuses_a_data_module_without_them():
    model = NeedsDataViews(backbone="resenc3d", backbone_kwargs=TINY_BACKBONES["resenc3d"], **TINY_HEADS)
    with pytest.raises(ConfigError, match=r"NeedsDataViews takes its views.*SyntheticCrops makes none.*set data.views to 2"):
        quiet_trainer().fit(model, datamodule=SyntheticCrops(views=0))
    quiet_trainer().fit(model, datamodule=SyntheticCrops(views=2))


def test_a_method_that_takes_either_accepts_both():
    for views in (0, 2):
        check_view_source(build("simclr"), "SyntheticCrops", views)
        check_view_source(build("anatomy"), "SyntheticCrops", views)
