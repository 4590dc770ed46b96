"""GuardedModule: terms checked then logged, the gradient check and its switch, the optimiser hook,
AdamW groups and the per-step warm-up/cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Callback
from torch import nn

from medssl.training import NonFiniteLossError, warmup_cosine
from medssl.errors import ConfigError
from medssl.training.module import decay_groups, decays
from tests.training.tiny import TinyData, TinyRegression, quiet_trainer


def test_finish_step_logs_every_term_under_its_prefix_and_trains_on_the_total():
    model = TinyRegression()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = quiet_trainer(max_steps=3)
    trainer.fit(model, datamodule=TinyData())
    assert {"train/mse", "train/total"} <= set(trainer.logged_metrics)
    assert "loss" in trainer.progress_bar_metrics and "loss" not in trainer.logged_metrics
    assert float(trainer.logged_metrics["train/total"]) == float(
        trainer.logged_metrics["train/mse"]
    )
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


class NaNTargetsAt(TinyData):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.nan_step = step

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return (
            (x, torch.full_like(y, float("nan")))
            if self.trainer.global_step == self.nan_step
            else (x, y)
        )


def test_a_nan_term_stops_the_run_at_its_step_before_any_update():
    model = TinyRegression()
    seen: list[list[torch.Tensor]] = []

    class Snapshot(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append([p.detach().clone() for p in pl_module.parameters()])

    with pytest.raises(
        NonFiniteLossError, match=r"step 2: loss is not finite \(mse=nan, total=nan\)"
    ):
        quiet_trainer(max_steps=6, callbacks=[Snapshot()]).fit(model, datamodule=NaNTargetsAt(2))
    assert all(
        torch.equal(a, b) for a, b in zip(seen[-1], model.parameters())
    )  # step 2 never stepped


@pytest.mark.parametrize("check", [True, False])
def test_the_gradient_check_follows_its_hyperparameter(check):
    model = TinyRegression(check_gradients=check)
    model.net[0].weight.register_hook(lambda grad: grad * float("nan"))
    trainer = quiet_trainer(max_steps=1)
    if check:
        with pytest.raises(
            NonFiniteLossError, match=r"step 0: non-finite gradient \(e\.g\. net\.0\.weight\)"
        ):
            trainer.fit(model, datamodule=TinyData())
        assert bool(torch.isfinite(model.net[0].weight).all())
    else:  # the switch exists for fp16 loss scaling, which skips such steps itself
        trainer.fit(model, datamodule=TinyData())
        assert not bool(torch.isfinite(model.net[0].weight).all())


def test_after_optimizer_step_runs_once_per_real_step_not_per_micro_batch():
    model = TinyRegression()
    quiet_trainer(max_steps=3, accumulate_grad_batches=2).fit(
        model, datamodule=TinyData(num_batches=8)
    )
    assert model.optimizer_steps == 3


def test_adamw_groups_scale_the_rate_drop_empty_groups_and_keep_weight_decay():
    model = TinyRegression()
    weights, others = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2))
    config = model.adamw_with_schedule(
        [
            {"params": [weights], "weight_decay": 0.1, "lr_scale": 0.5},
            {"params": [], "weight_decay": 0.1},
            {"params": [others], "weight_decay": 0.0},
        ],
        lr=0.2, warmup_steps=0, min_lr_ratio=0.1,
    )  # fmt: skip
    groups = config["optimizer"].param_groups
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(0.1, 0.1), (0.2, 0.0)]
    assert all("lr_scale" not in g for g in groups)
    assert config["lr_scheduler"]["interval"] == "step"


def test_the_rate_warms_up_then_follows_the_cosine_over_the_runs_steps():
    rates: list[float] = []

    class Rates(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    model = TinyRegression(lr=0.1, warmup_steps=2, min_lr_ratio=0.1)
    quiet_trainer(max_steps=10, callbacks=[Rates()]).fit(model, datamodule=TinyData(num_batches=10))
    expected = [0.1 * warmup_cosine(s, 2, 10, 0.1) for s in range(10)]
    assert rates == pytest.approx(expected)
    assert rates[:3] == pytest.approx([0.05, 0.1, 0.1]) and rates[-1] > 0.01


def test_schedule_without_a_trainer_stays_flat_after_warm_up():
    config = TinyRegression(lr=1.0, warmup_steps=2).configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(6):
        rates.append(config["optimizer"].param_groups[0]["lr"])
        config["optimizer"].step(), scheduler.step()
    assert rates == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert warmup_cosine(5, 2, math.inf, 0.1) == 1.0


def test_decay_groups_decay_matrices_only_and_skip_frozen_parameters():
    net = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 1))
    net[2].weight.requires_grad_(False)
    decay, plain = decay_groups(net.named_parameters(), 0.05, lr_scale=0.3)
    ids = lambda params: [id(p) for p in params]
    assert ids(decay["params"]) == ids([net[0].weight]) and decay["weight_decay"] == 0.05
    assert ids(plain["params"]) == ids([net[0].bias, net[1].weight, net[1].bias, net[2].bias])
    assert plain["weight_decay"] == 0.0 and decay["lr_scale"] == plain["lr_scale"] == 0.3


def test_decay_follows_the_rank_a_parameter_had_before_fsdp_sharded_it():
    shard = torch.zeros(6)  # a 1-D shard, as FSDP with use_orig_params hands it over
    ranks = {"net.0.weight": 2, "net.0.bias": 1}
    assert decays("_fsdp_wrapped_module.net.0.weight", shard, ranks)
    assert not decays("_fsdp_wrapped_module.net.0.bias", shard, ranks)
    assert not decays("net.0.weight", shard)  # unknown: its own rank decides
    with pytest.raises(ConfigError, match="use_orig_params"):
        decays("_fsdp_wrapped_module._flat_param", shard, ranks)


def test_configure_model_records_every_parameters_rank_before_wrapping():
    model = TinyRegression()
    assert model.true_ndims == {}
    model.configure_model()
    assert model.true_ndims == {name: p.ndim for name, p in model.named_parameters()}
    assert any(n == 1 for n in model.true_ndims.values()) and any(n == 2 for n in model.true_ndims.values())
