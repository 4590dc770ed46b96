"""SegmentationDecoder: fits every registered backbone, 2D and 3D, and learns.

Parametrized over ``list_backbones()`` with the small variants of the backbone tests, so a new
backbone is covered without an edit here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medssl.backbones import create_backbone, list_backbones
from medssl.heads import SegmentationDecoder, build_head
from medssl.heads.seg_decoder import fit_to
from tests.backbones.test_backbones import TINY

NUM_CLASSES = 3


def tiny_encoder(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """A small seeded encoder and a batch ``[2, C, *spatial]`` whose sizes are multiples of 32."""
    kwargs, size = TINY.get(name, ({}, 64))
    size = max(32, -(-size // 32) * 32)
    torch.manual_seed(0)
    encoder = create_backbone(name, **kwargs)
    return encoder, torch.randn(2, encoder.in_channels, *[size] * encoder.spatial_dims)


def decoder_for(encoder: torch.nn.Module, **kwargs: object) -> SegmentationDecoder:
    return SegmentationDecoder(
        encoder.feature_channels,
        encoder.feature_strides,
        encoder.spatial_dims,
        encoder.in_channels,
        NUM_CLASSES,
        **kwargs,
    )


@pytest.mark.parametrize("name", list_backbones())
def test_logits_at_input_resolution_and_deep_supervision_pyramid(name: str) -> None:
    encoder, x = tiny_encoder(name)
    decoder = decoder_for(encoder, deep_supervision=True)
    spatial = list(x.shape[2:])
    with torch.no_grad():
        features = encoder.forward_features(x)
        decoder.eval()
        logits = decoder(features, x)
        decoder.train()
        outputs = decoder(features, x)
    assert list(logits.shape) == [2, NUM_CLASSES, *spatial]
    assert torch.isfinite(logits).all()
    assert isinstance(outputs, list) and len(outputs) == len(decoder.level_strides) >= 2
    for level, out in enumerate(outputs):  # full resolution first, then 1/2, 1/4, ...
        assert list(out.shape) == [2, NUM_CLASSES, *(s // 2**level for s in spatial)]


def test_gradients_reach_encoder_and_decoder() -> None:
    encoder, x = tiny_encoder("swin2d")
    decoder = decoder_for(encoder, decoder_channels=[8, 8, 16, 16, 16])
    decoder(encoder.forward_features(x), x).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    # Swin has no stride-1 map: the full-resolution skip is a conv block on the image
    assert "1" in decoder.stems


def test_vit_maps_are_projected_to_a_pyramid() -> None:
    encoder, x = tiny_encoder("vit3d")  # patch 8: four maps at stride 8
    decoder = decoder_for(encoder)
    assert decoder.pyramid is not None and decoder.pyramid.out_strides == [1, 2, 4, 8]
    with torch.no_grad():
        maps = decoder.pyramid(encoder.forward_features(x))
    assert [m.shape[2] for m in maps] == [32, 16, 8, 4]


def test_sizes_that_are_not_multiples_of_the_stride() -> None:
    torch.manual_seed(0)
    encoder = create_backbone(
        "resenc3d", channels=(4, 8, 8), blocks_per_stage=(1, 1, 1), strides=(1, 2, 2)
    )
    decoder = decoder_for(encoder, decoder_channels=[4, 8], residual=True, norm="batch")
    x = torch.randn(2, 1, 13, 10, 7)
    with torch.no_grad():
        assert decoder(encoder.forward_features(x), x).shape == (2, NUM_CLASSES, 13, 10, 7)


def test_fit_to_crops_and_pads() -> None:
    x = torch.ones(1, 1, 4, 3)
    assert fit_to(x, [3, 5]).shape == (1, 1, 3, 5)
    assert fit_to(x, [3, 5])[0, 0, :, 3:].abs().sum() == 0


def test_bad_construction_is_refused() -> None:
    with pytest.raises(ValueError, match="increase strictly or all be equal"):
        SegmentationDecoder([8, 16, 32], [2, 4, 4], 3, 1, 2)
    with pytest.raises(ValueError, match="power of 2"):
        SegmentationDecoder([8, 16], [3, 6], 3, 1, 2)
    with pytest.raises(ValueError, match="decoder_channels needs 2"):
        SegmentationDecoder([8, 16], [2, 4], 3, 1, 2, decoder_channels=[8])
    with pytest.raises(ValueError, match="norm must be"):
        SegmentationDecoder([8, 16], [2, 4], 3, 1, 2, norm="layer")
    with pytest.raises(ValueError, match="spatial_dims"):
        SegmentationDecoder([8, 16], [2, 4], 4, 1, 2)
    with pytest.raises(ValueError, match="one channel count per stride"):
        SegmentationDecoder([8], [2, 4], 3, 1, 2)


def test_bad_inputs_are_refused() -> None:
    decoder = SegmentationDecoder([4, 8], [2, 4], 3, 1, 2)
    x = torch.randn(1, 1, 16, 16, 16)
    good = [torch.randn(1, 4, 8, 8, 8), torch.randn(1, 8, 4, 4, 4)]
    with pytest.raises(ValueError, match="expects 2 feature maps"):
        decoder(good[:1], x)
    with pytest.raises(ValueError, match="feature map 1"):
        decoder([good[0], torch.randn(1, 7, 4, 4, 4)], x)
    with pytest.raises(ValueError, match="expects image"):
        decoder(good, x[:, :, 0])


def test_build_head_takes_the_encoder_layout_from_the_encoder() -> None:
    encoder, _ = tiny_encoder("resenc2d")
    head = build_head("segmentation", {"num_classes": 2, "deep_supervision": False}, encoder)
    assert isinstance(head, SegmentationDecoder) and head.feature_strides == [1, 2, 4, 8]
    with pytest.raises(ValueError, match="come from the encoder"):
        build_head("segmentation", {"num_classes": 2, "spatial_dims": 3}, encoder)
    with pytest.raises(ValueError, match="unknown key"):
        build_head("segmentation", {"num_classes": 2, "channels": 3}, encoder)
    with pytest.raises(ValueError, match="missing key"):
        build_head("segmentation", {}, encoder)
    spec = {"num_classes": 2, "text_dim": 8, "embed_dim": 16, "num_heads": 2}
    classifier = build_head("classification", spec, encoder)  # the lazy branch
    assert type(classifier).__name__ == "GuidelineDecoder"
    with pytest.raises(ValueError, match="unknown head kind"):
        build_head("registration", {}, encoder)


def spheres(count: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy volumes ``[count, 1, size^3]`` with one bright ball each, labels ``[count, size^3]``."""
    axis = torch.arange(size, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"))
    centres = size / 3 + size / 3 * torch.rand(count, 3, 1, 1, 1, generator=gen)
    radii = size / 6 + size / 8 * torch.rand(count, 1, 1, 1, generator=gen)
    labels = ((grid[None] - centres).square().sum(1) <= radii.square()).long()
    images = labels[:, None].float() + 0.3 * torch.randn(count, 1, size, size, size, generator=gen)
    return images, labels


def dice(logits: torch.Tensor, labels: torch.Tensor) -> float:
    predicted = logits.argmax(1) == 1
    truth = labels == 1
    return float(2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()))


def test_tiny_encoder_decoder_overfits_spheres() -> None:
    torch.manual_seed(0)
    encoder = create_backbone(
        "resenc3d", channels=(4, 8, 16), blocks_per_stage=(1, 1, 1), strides=(1, 2, 2)
    )
    decoder = SegmentationDecoder(encoder.feature_channels, encoder.feature_strides, 3, 1, 2)
    images, labels = spheres(2, 16, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([*encoder.parameters(), *decoder.parameters()], lr=1e-2)
    for _ in range(40):
        loss = F.cross_entropy(decoder(encoder.forward_features(images), images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    decoder.eval()
    encoder.eval()
    with torch.no_grad():
        score = dice(decoder(encoder.forward_features(images), images), labels)
    assert score > 0.9, score
