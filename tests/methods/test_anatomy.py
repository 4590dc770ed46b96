"""The anatomy-aware method: trains through Lightning, every term can be switched off, DDP-exact."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer

import medssl.methods.anatomy as anatomy_module
from medssl.methods.alignment import ConditionalAlignment
from medssl.methods.masked_patches import patchify, upsample_mask
from tests.methods.ddp_cases_anatomy import BodyCrops
from tests.methods.synthetic import TINY_BACKBONES, build
from tests.methods.test_ddp import assert_ddp_equals_single


def fit(model, **trainer_args) -> Trainer:
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **{"fast_dev_run": True, **trainer_args},
    )
    trainer.fit(model, datamodule=BodyCrops(1))
    return trainer


def test_a_step_logs_every_term_and_moves_student_and_teacher():
    model = build("anatomy")
    student = [p.clone() for p in model.backbone.parameters()]
    teacher = [p.clone() for p in model.teacher["backbone"].parameters()]
    metrics = fit(model).callback_metrics
    for term in ("global", "patch", "anatomy", "alignment", "reconstruction", "total"):
        assert (
            math.isfinite(float(metrics[f"train/{term}"])) and float(metrics[f"train/{term}"]) > 0
        )
    assert float(metrics["train/kept_pairs"]) > 0.5  # crops at two places in four volumes
    after = list(model.backbone.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(student, after))
    for t0, t1, s in zip(teacher, model.teacher["backbone"].parameters(), after):
        assert not t1.requires_grad and t1.grad is None
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s.detach())


@pytest.mark.parametrize("term", ["global", "patch", "anatomy", "alignment", "reconstruction"])
def test_each_term_switches_off(term):
    model = build("anatomy", **{f"{term}_weight": 0.0})
    if term == "alignment":
        assert model.alignment is None
    if term == "reconstruction":
        assert model.decoder is None
    metrics = fit(model).callback_metrics
    assert float(metrics.get(f"train/{term}", torch.tensor(0.0))) == 0.0
    assert math.isfinite(float(metrics["train/total"]))


def test_mining_ablations_and_bad_settings():
    fit(build("anatomy", use_prior=False))
    fit(build("anatomy", use_teacher_mining=False))
    with pytest.raises(ValueError, match="neither"):
        build("anatomy", use_prior=False, use_teacher_mining=False)
    with pytest.raises(ValueError, match="weights"):
        build(
            "anatomy",
            **{
                f"{t}_weight": 0.0
                for t in ("global", "patch", "anatomy", "alignment", "reconstruction")
            },
        )
    with pytest.raises(ValueError, match="mask_ratio"):
        build("anatomy", mask_ratio=1.0)


def test_a_crop_that_does_not_tile_the_last_feature_map_is_rejected():
    model = build("anatomy")
    batch = {
        "image": torch.randn(2, 1, 18, 16, 8),
        "body": torch.rand(2, 3),
        "volume": torch.tensor([0, 1]),
    }
    with pytest.raises(ValueError, match="multiple of the last feature map"):
        model.training_step(batch, 0)
    batch = {"image": torch.randn(2, 1, 16, 16, 8), "body": torch.rand(2, 2)}
    with pytest.raises(ValueError, match="body"):
        model.training_step(batch, 0)


def test_bf16_mixed_gives_a_finite_float32_loss():
    metrics = fit(
        build("anatomy", backbone="vit3d", backbone_kwargs=TINY_BACKBONES["vit3d"]),
        precision="bf16-mixed",
    ).callback_metrics
    assert metrics["train/total"].dtype == torch.float32 and math.isfinite(
        float(metrics["train/total"])
    )


def test_masks_patches_and_alignment_shapes():
    mask = torch.tensor([[True, False, False, True]])
    voxels = upsample_mask(mask, (2, 2), (2, 3))
    assert voxels.shape == (1, 1, 4, 6) and int(voxels.sum()) == 12
    x = torch.arange(24.0).reshape(1, 1, 4, 6)
    patches = patchify(x, (2, 2), (2, 3))
    assert patches.shape == (1, 4, 6) and patches[0, 1].tolist() == [3, 4, 5, 9, 10, 11]
    model = build("anatomy")
    keys = torch.arange(3)
    masks = model.patch_masks(keys, 2, 10, 0)
    assert masks.shape == (6, 10) and (masks.sum(1) == 4).all()
    assert torch.equal(model.patch_masks(keys[1:], 2, 10, 0)[:2], masks[1:3])  # keyed by crop
    align = ConditionalAlignment(8, num_heads=2)
    assert align(torch.randn(3, 5, 8), torch.randn(3, 7, 8)).shape == (3, 5, 8)
    with pytest.raises(ValueError, match="divisible"):
        ConditionalAlignment(6, num_heads=4)


@pytest.mark.slow  # two subprocess runs, ~30 s on 2 busy cores
def test_two_gloo_ranks_give_the_single_process_loss_and_gradients(tmp_path):
    assert_ddp_equals_single(tmp_path, "tests.methods.ddp_cases_anatomy:case")


def test_the_online_probe_runs_on_the_anatomy_method_unchanged(tmp_path):
    from medssl.training.online_probe import OnlineProbe
    from tests.methods.phantom_data import phantom_probe_set, phantom_store

    store = phantom_store(tmp_path / "store", n=2)
    probe_file = phantom_probe_set(store, crop_size=(16, 16, 8), per_class=2).save(
        tmp_path / "probe.safetensors"
    )
    probe = OnlineProbe(str(probe_file), every_n_steps=1, linear_steps=10)
    fit(
        build("anatomy"),
        fast_dev_run=False,
        max_steps=1,
        callbacks=[probe],
        default_root_dir=tmp_path,
    )
    assert [row["step"] for row in probe.history] == [0, 1]
    assert (tmp_path / "probe.csv").is_file()  # in the run folder, not the working directory


# DINO/iBOT details (issue 13 item 6) --------------------------------------------------------
def test_the_teacher_temperature_is_warmed_up_linearly():
    model = build(
        "anatomy", warmup_teacher_temperature=0.02, teacher_temperature=0.06,
        teacher_temperature_warmup_steps=4,
    )  # fmt: skip
    metrics = fit(model, fast_dev_run=False, max_steps=3, limit_train_batches=3).callback_metrics
    assert float(metrics["train/teacher_temperature"]) == pytest.approx(0.04)  # step 2 of 4


def test_the_ema_momentum_follows_a_cosine_to_one_over_training(monkeypatch):
    momenta = []
    update = anatomy_module.ema_update

    def recording(teacher, student, momentum):
        momenta.append(momentum)
        update(teacher, student, momentum)

    monkeypatch.setattr(anatomy_module, "ema_update", recording)
    fit(build("anatomy"), fast_dev_run=False, max_steps=3, limit_train_batches=3)
    # ema_momentum 0.9 over 3 steps: steps 0, 1, 2 of a cosine to 1 at step 3; backbone, head alike
    expected = [1 - 0.1 * (1 + math.cos(math.pi * s / 3)) / 2 for s in range(3)]
    assert momenta[::2] == pytest.approx(expected) and momenta[1::2] == momenta[::2]


def test_the_last_layer_is_frozen_for_the_first_steps(monkeypatch):
    model = build("anatomy", freeze_last_layer=2)
    seen = []
    step = model.after_optimizer_step

    def recording():
        mlp = [p.detach().clone() for p in model.head.mlp.parameters()]
        seen.append((model.head.last.weight.detach().clone(), mlp))
        step()

    monkeypatch.setattr(model, "after_optimizer_step", recording)
    start = model.head.last.weight.detach().clone()
    fit(model, fast_dev_run=False, max_steps=3, limit_train_batches=3)
    (w0, _), (w1, _), (w2, _) = seen
    assert torch.equal(w0, start) and torch.equal(w1, start)  # steps 0, 1: no update
    assert not torch.equal(w2, start)  # step 2: trained
    assert any(not torch.equal(a, b) for a, b in zip(seen[0][1], seen[1][1]))  # the MLP trains


def test_the_two_views_are_cut_from_separate_random_boxes():
    image = torch.randn(3, 1, 16, 16, 8)
    keys = torch.arange(3)
    model = build("anatomy")
    x = model.cut_views([image, image], keys, 0)
    assert x.shape == (6, 1, 16, 16, 8)
    assert all(not torch.equal(x[i], x[3 + i]) for i in range(3))  # one crop, two boxes
    assert torch.equal(model.cut_views([image[1:], image[1:]], keys[1:], 0)[:2], x[1:3])  # keyed
    whole = build("anatomy", view_scale=(1.0, 1.0)).cut_views([image, image], keys, 0)
    assert torch.equal(whole, torch.cat([image, image]))
    with pytest.raises(ValueError, match="view_scale"):
        build("anatomy", view_scale=(0.0, 1.0))
