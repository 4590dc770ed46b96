"""The 3D convolution that sidesteps oneDNN's NaN bf16 weight gradients on thin CPU maps."""

from __future__ import annotations

import torch
from torch import nn

from medssl.backbones.conv import Conv3d


def _weight_grad(conv: nn.Conv3d, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    conv.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = conv(x)
    y.float().pow(2).mean().backward()
    return conv.weight.grad.clone()


def test_bf16_weight_gradients_of_depth_two_maps_are_finite_and_match_float32():
    # Plain nn.Conv3d gave NaN in about 1 of 15 of these draws (torch 2.13, avx512_bf16).
    torch.manual_seed(0)
    for _ in range(200):
        conv = Conv3d(16, 16, 3, padding=1, bias=False)
        x = torch.randn(2, 16, 2, 2, 2)
        bf16 = _weight_grad(conv, x, bf16=True)
        assert torch.isfinite(bf16).all()
        torch.testing.assert_close(bf16, _weight_grad(conv, x, bf16=False))


def test_thick_maps_stay_in_bf16_and_the_module_is_a_plain_conv3d():
    conv = Conv3d(4, 8, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(1, 4, 4, 4, 4)).dtype == torch.bfloat16
        assert conv(torch.randn(1, 4, 2, 8, 8)).dtype == torch.float32
    assert conv(torch.randn(1, 4, 2, 8, 8)).dtype == torch.float32
    assert isinstance(conv, nn.Conv3d)
    assert conv.state_dict().keys() == nn.Conv3d(4, 8, 3, padding=1).state_dict().keys()
