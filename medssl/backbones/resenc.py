"""Residual-encoder CNN as in nnU-Net's ResEnc presets, for 3D volumes and 2D images.

Isensee et al. 2024, "nnU-Net Revisited: A Call for Rigorous Validation in 3D Medical Image
Segmentation". A stem convolution, then stages of residual blocks (conv-IN-LeakyReLU-conv-IN,
skip through average pooling and a 1x1 conv where shape changes, LeakyReLU after the sum); the
first block of a stage downsamples by its stride. The 3D default is the M/L/XL encoder:
channels 32, 64, 128, 256, 320, 320 with 1, 3, 4, 6, 6, 6 blocks. (nnU-Net's M, L and XL
presets share this encoder and differ in patch and batch size, which the plan decides.)

Input ``[B, C, D, H, W]`` (or ``[B, C, H, W]``). ``forward_features``: one map per stage,
``[B, channels[i], *ceil(S / feature_strides[i])]``; ``forward``: ``[B, channels[-1]]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from medssl.backbones.base import Backbone
from medssl.backbones.conv import Conv3d
from medssl.backbones.registry import register_backbone

_LEAKY_SLOPE = 0.01


def _layers(spatial_dims: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    if spatial_dims == 3:
        return Conv3d, nn.InstanceNorm3d, nn.AvgPool3d
    if spatial_dims == 2:
        return nn.Conv2d, nn.InstanceNorm2d, nn.AvgPool2d
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


class ConvNormAct(nn.Sequential):
    """Convolution (``kernel``, ``stride``, same padding) + instance norm + LeakyReLU."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, kernel: int, stride: int):
        conv, norm, _ = _layers(spatial_dims)
        super().__init__(
            conv(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            norm(cout, affine=True),
            nn.LeakyReLU(_LEAKY_SLOPE, inplace=True),
        )


class ResidualBlock(nn.Module):
    """Basic residual block with the "D" shortcut (avg-pool, then 1x1 conv + norm if the
    channels change): ``[B, cin, *S]`` -> ``[B, cout, *ceil(S / stride)]``."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, kernel: int, stride: int):
        super().__init__()
        conv, norm, pool = _layers(spatial_dims)
        self.conv1 = ConvNormAct(spatial_dims, cin, cout, kernel, stride)
        self.conv2 = conv(cout, cout, kernel, padding=kernel // 2, bias=False)
        self.norm2 = norm(cout, affine=True)
        skip: list[nn.Module] = []
        if stride > 1:
            skip.append(pool(stride, stride, ceil_mode=True))
        if cin != cout:
            skip += [conv(cin, cout, 1, bias=False), norm(cout, affine=True)]
        self.skip = nn.Sequential(*skip)
        self.act = nn.LeakyReLU(_LEAKY_SLOPE, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm2(self.conv2(self.conv1(x))) + self.skip(x))


class ResEncEncoder(Backbone):
    """Stem + residual stages; see the module docstring for shapes."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int],
        blocks_per_stage: Sequence[int],
        strides: Sequence[int],
        kernel_size: int,
        use_checkpoint: bool,
    ):
        super().__init__()
        _layers(spatial_dims)
        if not len(channels) == len(blocks_per_stage) == len(strides):
            raise ValueError(
                f"channels {channels}, blocks_per_stage {blocks_per_stage} and strides {strides} "
                "need one entry per stage"
            )
        if any(n < 1 for n in blocks_per_stage):
            raise ValueError(f"blocks_per_stage {blocks_per_stage}: every stage needs a block")
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        self.use_checkpoint = use_checkpoint
        self.stem = ConvNormAct(spatial_dims, in_channels, channels[0], kernel_size, 1)
        stages, cin = [], channels[0]
        for cout, n, stride in zip(channels, blocks_per_stage, strides):
            stage = [ResidualBlock(spatial_dims, cin, cout, kernel_size, stride)]
            stage += [ResidualBlock(spatial_dims, cout, cout, kernel_size, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.feature_channels = list(channels)
        self.feature_strides = [math.prod(strides[: i + 1]) for i in range(len(strides))]
        self.num_features = channels[-1]
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(module.weight, a=_LEAKY_SLOPE)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """``[B, C, *S]`` -> one map per stage, ``[B, channels[i], *ceil(S / feature_strides[i])]``."""
        self.check_input(x)
        h = self.stem(x)
        maps = []
        for stage in self.stages:
            for block in stage:
                if self.use_checkpoint and torch.is_grad_enabled():
                    h = checkpoint(block, h, use_reentrant=False)
                else:
                    h = block(h)
            maps.append(h)
        return maps


@register_backbone("resenc3d")
def resenc3d(
    in_channels: int = 1,
    channels: Sequence[int] = (32, 64, 128, 256, 320, 320),
    blocks_per_stage: Sequence[int] = (1, 3, 4, 6, 6, 6),
    strides: Sequence[int] = (1, 2, 2, 2, 2, 2),
    kernel_size: int = 3,
    use_checkpoint: bool = False,
) -> ResEncEncoder:
    """3D nnU-Net ResEnc (M/L/XL) encoder. Input ``[B, in_channels, D, H, W]`` (sizes divisible
    by ``prod(strides)`` = 32 keep every map exact); ``forward`` -> ``[B, channels[-1]]``."""
    return ResEncEncoder(
        3,
        in_channels,
        tuple(channels),
        tuple(blocks_per_stage),
        tuple(strides),
        kernel_size,
        use_checkpoint,
    )


@register_backbone("resenc2d")
def resenc2d(
    in_channels: int = 1,
    channels: Sequence[int] = (32, 64, 128, 256, 512, 512, 512),
    blocks_per_stage: Sequence[int] = (1, 3, 4, 6, 6, 6, 6),
    strides: Sequence[int] = (1, 2, 2, 2, 2, 2, 2),
    kernel_size: int = 3,
    use_checkpoint: bool = False,
) -> ResEncEncoder:
    """2D nnU-Net ResEnc encoder (channels capped at 512 as nnU-Net's 2D plans).
    Input ``[B, in_channels, H, W]``; ``forward`` -> ``[B, channels[-1]]``."""
    return ResEncEncoder(
        2,
        in_channels,
        tuple(channels),
        tuple(blocks_per_stage),
        tuple(strides),
        kernel_size,
        use_checkpoint,
    )
