"""ViT specifics: position embeddings for other grids, taps for decoders, input checks."""

from __future__ import annotations

import pytest
import torch

from medssl.backbones import create_backbone
from medssl.backbones.vit import sincos_position_embedding

TINY = {"size": "s", "depth": 4, "patch_size": 8}


@pytest.mark.parametrize("pos_embed", ["learnable", "sincos"])
def test_other_input_sizes_use_an_adapted_position_grid(pos_embed: str) -> None:
    model = create_backbone("vit3d", img_size=32, pos_embed=pos_embed, **TINY).eval()
    with torch.no_grad():
        maps = model.forward_features(torch.randn(1, 1, 16, 32, 48))
    assert [list(m.shape) for m in maps] == [[1, 384, 2, 4, 6]] * 4


def test_learnable_grid_is_used_unchanged_at_its_own_size() -> None:
    model = create_backbone("vit2d", img_size=64, **TINY)
    assert model.position_embedding((8, 8), torch.float32, torch.device("cpu")) is model.pos_embed
    stretched = model.position_embedding((8, 16), torch.float32, torch.device("cpu"))
    assert stretched.shape == (1, 128, 384)


def test_sincos_embedding_is_distinct_per_token_and_bounded() -> None:
    table = sincos_position_embedding((3, 4, 5), 100)  # 100 is not divisible by 6: zero tail
    assert table.shape == (60, 100)
    assert table.abs().max() <= 1
    assert torch.cdist(table, table).add(torch.eye(60)).min() > 0
    assert table[:, 96:].abs().sum() == 0


def test_taps_default_to_four_evenly_spaced_blocks_and_can_be_chosen() -> None:
    with torch.device("meta"):
        assert create_backbone("vit3d", size="b").out_indices == [2, 5, 8, 11]
        assert create_backbone("vit3d", size="l").out_indices == [5, 11, 17, 23]
    model = create_backbone("vit3d", img_size=32, out_indices=[1, 3], **TINY)
    assert model.feature_channels == [384, 384] and model.feature_strides == [8, 8]
    with pytest.raises(ValueError, match="out_indices"):
        create_backbone("vit3d", img_size=32, out_indices=[7], **TINY)


def test_input_not_divisible_by_the_patch_is_refused() -> None:
    model = create_backbone("vit3d", img_size=32, **TINY)
    with pytest.raises(ValueError, match="not divisible by patch_size 8"):
        model(torch.randn(1, 1, 32, 32, 30))
