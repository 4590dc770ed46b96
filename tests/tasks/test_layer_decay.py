"""Layer ids, freezing and layer-wise learning-rate decay over every registered backbone."""

from __future__ import annotations

import pytest

from medssl.backbones import create_backbone, list_backbones
from medssl.tasks.layer_decay import freeze_below, layer_ids, layer_scales, num_layers
from tests.backbones.test_backbones import TINY


@pytest.mark.parametrize("name", list_backbones())
def test_layers_rise_with_depth_and_cover_every_parameter(name):
    encoder = create_backbone(name, **TINY[name][0])
    ids = layer_ids(encoder)
    names = [n for n, _ in encoder.named_parameters()]
    assert set(ids) == set(names)
    assert num_layers(ids) >= 3, f"{name}: expected a stem, stages and a top, got {num_layers(ids)} layers"
    first = [n for n in names if n.split(".")[0] in ("stem", "patch_embed", "pos_embed")]
    assert first and all(ids[n] == 0 for n in first)
    assert max(ids.values()) == num_layers(ids) - 1


@pytest.mark.parametrize("name", list_backbones())
def test_freeze_below_stops_gradients_of_shallow_layers_only(name):
    encoder = create_backbone(name, **TINY[name][0])
    ids = layer_ids(encoder)
    cut = num_layers(ids) - 1
    frozen = freeze_below(encoder, cut)
    assert frozen > 0
    for n, p in encoder.named_parameters():
        assert p.requires_grad == (ids[n] >= cut), n


def test_scales_decay_geometrically_from_the_top():
    ids = {"stem.w": 0, "stages.0.w": 1, "top.w": 2}
    scales = layer_scales(ids, ids, 0.5)
    assert scales == {"stem.w": 0.125, "stages.0.w": 0.25, "top.w": 0.5}
    assert set(layer_scales(ids, ids, 1.0).values()) == {1.0}
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="layer_decay"):
            layer_scales(ids, ids, bad)
