"""Every registered backbone keeps the encoder contract (DESIGN.md section 3).

Parametrized over ``list_backbones()``: a newly registered backbone is tested here without
any edit (with its default kwargs and a 64-voxel input unless ``TINY`` gives a smaller one).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from medssl.backbones import Backbone, create_backbone, get_backbone_factory, list_backbones

# name -> (kwargs for a small model, spatial size of the test input)
TINY: dict[str, tuple[dict[str, object], int]] = {
    # window 7 and the full sizes are exercised by the MONAI comparison (test_swin_monai_compat)
    "swin3d": ({"window_size": 4}, 32),
    "swin2d": ({"window_size": 4}, 32),
    "vit3d": ({"size": "s", "depth": 4, "img_size": 32, "patch_size": 8}, 32),
    "vit2d": ({"size": "s", "depth": 4, "img_size": 64, "patch_size": 16}, 64),
    "resenc3d": (
        {"channels": (8, 16, 32, 32), "blocks_per_stage": (1, 2, 2, 1), "strides": (1, 2, 2, 2)},
        16,
    ),
    "resenc2d": (
        {"channels": (8, 16, 32, 32), "blocks_per_stage": (1, 2, 2, 1), "strides": (1, 2, 2, 2)},
        32,
    ),
}
BATCH = 2


def build(name: str, **overrides: object) -> tuple[Backbone, torch.Tensor]:
    """A tiny seeded model and a seeded input batch ``[2, C, *spatial]`` for it."""
    kwargs, size = TINY.get(name, ({}, 64))
    torch.manual_seed(0)
    model = create_backbone(name, **{**kwargs, **overrides})
    x = torch.randn(BATCH, model.in_channels, *([size] * model.spatial_dims))
    return model, x


def projection_loss(outputs: list[torch.Tensor]) -> torch.Tensor:
    """A fixed random projection of every output (a plain mean of a layer-normed map is 0)."""
    gen = torch.Generator().manual_seed(1)
    return sum((o.float() * torch.randn(o.shape, generator=gen)).sum() for o in outputs)


@pytest.fixture(params=list_backbones())
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_surface_shapes_match_the_attributes(name: str) -> None:
    model, x = build(name)
    model.eval()
    assert model.spatial_dims in (2, 3)
    assert len(model.feature_channels) == len(model.feature_strides) > 0
    assert model.feature_strides == sorted(model.feature_strides), "highest resolution first"
    with torch.no_grad():
        maps = model.forward_features(x)
        pooled = model(x)
    assert len(maps) == len(model.feature_channels)
    for fmap, channels, stride in zip(maps, model.feature_channels, model.feature_strides):
        expected = [BATCH, channels, *(math.ceil(s / stride) for s in x.shape[2:])]
        assert list(fmap.shape) == expected
    assert list(pooled.shape) == [BATCH, model.num_features]


def test_gradients_reach_every_parameter(name: str) -> None:
    model, x = build(name)
    model.train()
    projection_loss(model.forward_features(x)).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient for {pname}"
        assert param.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


def test_eval_is_deterministic(name: str) -> None:
    model, x = build(name)
    model.eval()
    with torch.no_grad():
        first, second = model.forward_features(x), model.forward_features(x)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_bf16_autocast_forward_is_finite_and_close(name: str) -> None:
    model, x = build(name)
    model.eval()
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pooled = model(x)
    assert torch.isfinite(pooled).all()
    similarity = torch.nn.functional.cosine_similarity(pooled.float(), reference, dim=1)
    assert (similarity > 0.98).all(), similarity


def test_activation_checkpointing_changes_nothing(name: str) -> None:
    if "use_checkpoint" not in inspect.signature(get_backbone_factory(name)).parameters:
        pytest.skip(f"{name} has no use_checkpoint option")
    plain, x = build(name, use_checkpoint=False)
    checkpointed, _ = build(name, use_checkpoint=True)
    checkpointed.load_state_dict(plain.state_dict())
    results = []
    for model in (plain, checkpointed):
        model.train()
        outputs = model.forward_features(x)
        projection_loss(outputs).backward()
        results.append((outputs, {n: p.grad for n, p in model.named_parameters()}))
    (out_a, grads_a), (out_b, grads_b) = results
    for a, b in zip(out_a, out_b):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for pname in grads_a:
        torch.testing.assert_close(grads_a[pname], grads_b[pname], rtol=1e-4, atol=1e-6, msg=pname)


def test_wrong_input_layout_is_refused(name: str) -> None:
    model, x = build(name)
    with pytest.raises(ValueError, match="expects input"):
        model(x[:, :, 0])  # one spatial axis too few
    with pytest.raises(ValueError, match="expects input"):
        model(torch.cat([x, x], dim=1))  # wrong channel count


@pytest.mark.parametrize(
    ("name", "size", "width"),
    [
        ("swin3d", "b", 768),
        ("swin3d", "l", 1536),
        ("swin3d", "h", 3072),
        ("swin2d", "b", 768),
        ("vit3d", "s", 384),
        ("vit3d", "b", 768),
        ("vit3d", "l", 1024),
        ("vit2d", "b", 768),
    ],
)
def test_size_presets(name: str, size: str, width: int) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = create_backbone(name, size=size)
    assert model.num_features == width
    assert model.feature_channels[-1] == width
