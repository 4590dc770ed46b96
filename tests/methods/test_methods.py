"""Every registered method trains for a real step (Trainer(fast_dev_run=True)) on every tiny backbone."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer

from medssl.methods import METHODS, SSLMethod
from medssl.transforms import AugmentConfig
from tests.methods.synthetic import CROPS, TINY_BACKBONES, SyntheticCrops, build


def fit(model: SSLMethod, dims: int = 3, views: int = 0, **trainer_args) -> Trainer:
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **{"fast_dev_run": True, **trainer_args},
    )
    trainer.fit(model, datamodule=SyntheticCrops(crop_size=CROPS[dims], views=views))
    return trainer


def test_registry_lists_every_method():
    assert set(METHODS) == {"voco", "simclr", "swav", "anatomy", "joint2d3d"}
    assert all(issubclass(cls, SSLMethod) for cls in METHODS.values())


@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_real_training_step_changes_the_backbone(method, backbone):
    model = build(method, backbone)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainer = fit(model, dims=model.backbone.spatial_dims)
    loss = trainer.callback_metrics["train/total"]
    assert math.isfinite(float(loss))
    assert any(not torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_hparam_is_a_primitive(method):
    def primitive(v):
        if isinstance(v, dict):
            return all(isinstance(k, str) and primitive(x) for k, x in v.items())
        if isinstance(v, (list, tuple)):
            return all(primitive(x) for x in v)
        return v is None or isinstance(v, (str, int, float, bool))

    model = build(method)
    assert primitive(dict(model.hparams)), dict(model.hparams)


def test_every_loss_term_is_logged():
    model = build("voco")
    trainer = fit(model)
    for term in ("position", "regularization", "inter_volume", "total"):
        assert f"train/{term}" in trainer.callback_metrics


@pytest.mark.parametrize(
    "form,teacher_modules",
    [("cvpr", {"backbone", "projector"}), ("extended", {"projector"}), ("student-bases", set())],
)
def test_voco_teacher_follows_the_student_by_ema_and_gets_no_gradient(form, teacher_modules):
    """CVPR: the whole network has an EMA teacher; extended: the projector only (shared
    backbone); student-bases: none."""
    assert build("voco", form=form).hparams.ema_momentum == 0.9  # both references
    model = build("voco", form=form, ema_momentum=0.5)
    assert set(model.teacher) == teacher_modules
    before = {
        name: [p.clone() for p in model.teacher[name].parameters()] for name in teacher_modules
    }
    fit(model)
    for name in teacher_modules:
        student = getattr(model, name).parameters()
        for t0, t1, s in zip(before[name], model.teacher[name].parameters(), student, strict=True):
            assert not t1.requires_grad and t1.grad is None
            torch.testing.assert_close(t1, 0.5 * t0 + 0.5 * s.detach())


def test_voco_inter_volume_term_is_the_extended_forms_only():
    for form in ("cvpr", "student-bases"):
        assert float(fit(build("voco", form=form)).callback_metrics["train/inter_volume"]) == 0.0
    assert float(fit(build("voco", form="extended")).callback_metrics["train/inter_volume"]) > 0.0


def test_voco_projector_is_batchnorm_without_affine_on_every_scale_pooled():
    model = build("voco")
    norms = [m for m in model.projector.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 2
    assert all(not n.affine and not n.track_running_stats for n in norms)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.projector.modules())
    first = model.projector.net[0]
    assert first.in_features == sum(model.backbone.feature_channels)  # 4 + 8 + 16, not 16


@pytest.mark.parametrize("form", ["cvpr", "extended"])
def test_voco_dropout_hits_the_extended_students_features_only(form):
    """Extended: nn.Dropout1d(0.2) on [M, F] (the reference) zeroes whole student embeddings
    and scales the rest by 1/0.8; the teacher projector sees the undropped features."""
    model = build("voco", form=form, num_random_crops=8)
    seen = {}
    model.projector.register_forward_pre_hook(lambda m, a: seen.__setitem__("student", a[0]))
    model.teacher["projector"].register_forward_pre_hook(
        lambda m, a: seen.__setitem__("teacher", a[0])
    )
    fit(model)  # one step: a CVPR teacher is still the student's copy
    student, teacher = seen["student"].detach(), seen["teacher"]
    if form == "cvpr":
        torch.testing.assert_close(student, teacher)
        return
    rows = torch.nn.Dropout1d(0.5)(torch.ones(64, 8))  # what the reference's call does on [M, F]
    assert all(len(set(r.tolist())) == 1 for r in rows) and 0 < int((rows == 0).sum()) < 64 * 8
    dropped = (student == 0).all(dim=1)
    assert 0 < int(dropped.sum()) < len(student)
    torch.testing.assert_close(student[~dropped], teacher[~dropped] / 0.8)


def test_voco_augments_every_crop_on_its_own_draw():
    regions = torch.randn(2, 1, 16, 16, 8, generator=torch.Generator().manual_seed(0))
    plain, _ = build("voco", augment=False).make_views(regions, torch.Generator().manual_seed(1))
    augmented, labels = build("voco").make_views(regions, torch.Generator().manual_seed(1))
    assert augmented.shape == plain.shape == (2, 4 + 4, 1, 8, 8, 8) and labels.shape == (2, 4, 4)
    changed = [not torch.equal(a, p) for a, p in zip(augmented.flatten(0, 1), plain.flatten(0, 1))]
    assert 0 < sum(changed) < len(changed)  # some crops flipped/turned/shifted, others not


def test_voco_3d_grid_cuts_n_cubed_base_crops():
    model = build("voco", grid_dims=3, num_random_crops=3)
    shapes = []
    model.backbone.stem.register_forward_pre_hook(
        lambda module, args: shapes.append(tuple(args[0].shape))
    )
    fit(model)
    assert shapes[0] == (2 * (8 + 3), 1, 8, 8, 4)  # 2 regions x (2^3 bases + 3 random) of 8x8x4


def test_simclr_uses_the_data_modules_views_or_makes_its_own():
    fit(build("simclr", num_views=3), views=3)
    fit(build("simclr", num_views=3), views=0)
    with pytest.raises(ValueError, match="data.views"):
        fit(build("simclr", num_views=3), views=2)


def test_swav_multi_crop_is_the_loop_it_ran_before_multi_crop_had_one_home():
    from tests.transforms.test_multi_crop import reference_crops

    model = build("swav", global_crop_size=[12, 12, 8], augment={"blur_prob": 0.5})
    regions = torch.randn(3, 1, 16, 16, 8, generator=torch.Generator().manual_seed(2))
    crops = model.multi_crop(regions, torch.Generator().manual_seed(4))
    plan = [((12, 12, 8), (0.4, 1.0))] * 2 + [((8, 8, 4), (0.05, 0.4))] * 2
    expected = reference_crops(
        regions, torch.Generator().manual_seed(4), plan, AugmentConfig(blur_prob=0.5)
    )
    assert all(torch.equal(c, e) for c, e in zip(crops, expected, strict=True))


def test_swav_prototypes_stay_frozen_then_learn_and_stay_normalised():
    frozen = build("swav", freeze_prototypes_steps=10)
    before = frozen.prototypes.weight.clone()
    fit(frozen)
    torch.testing.assert_close(frozen.prototypes.weight, before)
    learning = build("swav", freeze_prototypes_steps=0)
    before = learning.prototypes.weight.clone()
    fit(learning)
    assert not torch.equal(learning.prototypes.weight, before)
    torch.testing.assert_close(
        learning.prototypes.weight.norm(dim=1), torch.ones(8), atol=1e-2, rtol=0
    )


def test_gradient_accumulation_steps_once_per_two_batches():
    model = build("simclr")
    trainer = fit(
        model,
        views=2,
        fast_dev_run=False,
        max_steps=2,
        accumulate_grad_batches=2,
        limit_train_batches=4,
    )
    assert trainer.global_step == 2


def test_export_state_is_the_backbone():
    model = build("voco")
    name, kwargs, state = model.export_state()
    assert name == "resenc3d" and kwargs == TINY_BACKBONES["resenc3d"]
    assert state.keys() == model.backbone.state_dict().keys()


@pytest.mark.slow
def test_compile_option_compiles_the_backbone_in_place_and_trains():
    model = build("simclr", compile=True)
    trainer = fit(model, views=2, fast_dev_run=False, max_steps=2)
    assert model._compiled and trainer.global_step == 2
    assert all(
        k.startswith("backbone.") and "_orig_mod" not in k
        for k in model.state_dict()
        if k.startswith("backbone")
    )


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_bf16_mixed_step_runs_and_gives_a_finite_float32_loss(method):
    model = build(method)
    trainer = fit(model, views=2 if method == "simclr" else 0, precision="bf16-mixed")
    assert trainer.callback_metrics["train/total"].dtype == torch.float32
    assert math.isfinite(float(trainer.callback_metrics["train/total"]))
