"""A U-Net decoder for any medssl encoder, 2D or 3D.

Start from the deepest feature map and go up one octave per stage to stride 1: a transposed
conv (kernel 2, stride 2), the skip map of the same stride concatenated, and a conv block
(conv-norm-LeakyReLU x2, or residual), as the decoders of nnU-Net (Isensee et al. 2021,
"nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation") and
SwinUNETR (Hatamizadeh et al. 2022, "Swin UNETR: Swin Transformers for Semantic Segmentation of
Brain Tumors in MRI Images") do. Where the encoder has no map at a stride (Swin starts at 2), the
skip is a conv block on the raw image (SwinUNETR's ``encoder1``), strided down when needed.
ViT maps that all share one stride first go through UNETR projections (``ScalePyramid``).

Built from the encoder's ``feature_channels`` / ``feature_strides`` / ``spatial_dims`` only, so
it never imports ``medssl.backbones``. Pure torch + MONAI network blocks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import Tensor, nn

from medssl.heads.pyramid import (
    ScalePyramid,
    conv_block,
    log2_exact,
    norm_name,
    shares_one_stride,
    unetr_strides,
)

MIN_DEFAULT_CHANNELS = 16


def fit_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """Crop (from the far end) or zero-pad the spatial axes of ``x`` ``[B, C, *S]`` to ``size``.

    Encoders round sizes up at each stride, so an upsampled map can be one voxel too large."""
    if list(x.shape[2:]) == list(size):
        return x
    x = x[(slice(None), slice(None), *(slice(0, s) for s in size))]
    pad: list[int] = []
    for have, want in zip(reversed(x.shape[2:]), reversed(size)):
        pad += [0, want - have]
    return F.pad(x, pad) if any(pad) else x


class UpStage(nn.Module):
    """One decoder stage: ``x`` ``[B, c_in, *S]`` up to ``[B, c_out, *2S]``, cropped to the skip's
    size, concatenated with ``skip`` ``[B, c_skip, *2S]``, then a conv block -> ``[B, c_out, *2S]``."""

    def __init__(
        self, spatial_dims: int, c_in: int, c_skip: int, c_out: int, norm: str, residual: bool
    ) -> None:
        super().__init__()
        transposed = Conv[Conv.CONVTRANS, spatial_dims]
        self.up = transposed(c_in, c_out, kernel_size=2, stride=2, bias=False)
        self.block = conv_block(spatial_dims, c_out + c_skip, c_out, norm, residual)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(torch.cat([fit_to(self.up(x), skip.shape[2:]), skip], dim=1))


class SegmentationDecoder(nn.Module):
    """U-Net decoder from an encoder's multi-scale maps to per-voxel class logits.

    Args:
        feature_channels: channels of each map of ``encoder.forward_features`` (highest
            resolution first).
        feature_strides: stride of each map; strictly increasing powers of 2, or all equal (ViT:
            projected UNETR-style to ``[p/2^(n-1), ..., p/2, p]``).
        spatial_dims: 2 or 3.
        in_channels: channels of the raw image (for skips built from it).
        num_classes: output channels (background included).
        decoder_channels: channels of the decoder stage at strides ``1, 2, 4, ..., deepest/2``
            (highest resolution first). Default: the encoder's channels at that stride, else half
            the next coarser stage's (at least 16).
        deep_supervision: in training mode, also return logits of every coarser stage.
        norm: "instance" (nnU-Net) or "batch".
        residual: residual conv blocks instead of plain conv-norm-LeakyReLU x2.

    ``forward(features, image)``: ``features`` as returned by the encoder for ``image``
    ``[B, in_channels, *S]``; returns logits ``[B, num_classes, *S]``, or with deep supervision
    in training mode a list ``[[B, K, *S], [B, K, *ceil(S/2)], [B, K, *ceil(S/4)], ...]``.
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        feature_strides: Sequence[int],
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        decoder_channels: Sequence[int] | None = None,
        deep_supervision: bool = False,
        norm: str = "instance",
        residual: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not feature_channels or len(feature_channels) != len(feature_strides):
            raise ValueError(
                f"one channel count per stride expected, got feature_channels "
                f"{list(feature_channels)} and feature_strides {list(feature_strides)}"
            )
        if in_channels < 1 or num_classes < 1:
            raise ValueError(
                f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}"
            )
        norm_name(norm)
        strides = [int(s) for s in feature_strides]
        for s in strides:
            log2_exact(s, "every feature stride")
        projected = shares_one_stride(strides)
        if projected:
            pyramid_strides = unetr_strides(strides[0], len(strides))
        elif all(a < b for a, b in itertools.pairwise(strides)):
            pyramid_strides = strides
        else:
            raise ValueError(
                f"feature_strides must increase strictly or all be equal (ViT), got {strides}"
            )
        deepest = pyramid_strides[-1]
        levels = log2_exact(deepest, "the deepest stride")
        if levels == 0:
            raise ValueError(f"the deepest map is at stride 1: nothing to decode ({strides})")
        self.spatial_dims, self.in_channels, self.num_classes = (
            spatial_dims,
            in_channels,
            num_classes,
        )
        self.feature_channels, self.feature_strides = list(feature_channels), strides
        self.deep_supervision = deep_supervision
        self.level_strides = [2**k for k in range(levels)]  # 1, 2, ..., deepest / 2

        given = {} if projected else dict(zip(strides, feature_channels))
        if decoder_channels is None:
            channels, wider = {}, feature_channels[-1]
            for s in reversed(self.level_strides):
                wider = channels[s] = given.get(s, max(MIN_DEFAULT_CHANNELS, wider // 2))
            decoder_channels = [channels[s] for s in self.level_strides]
        if len(decoder_channels) != levels or min(decoder_channels) < 1:
            raise ValueError(
                f"decoder_channels needs {levels} positive entries (strides "
                f"{self.level_strides}), got {list(decoder_channels)}"
            )
        self.decoder_channels = [int(c) for c in decoder_channels]
        at_stride = dict(zip(self.level_strides, self.decoder_channels))

        self.pyramid: ScalePyramid | None = None
        map_channels = list(feature_channels)
        if projected:  # ViT: project each depth to its own stride
            map_channels = [at_stride[s] for s in pyramid_strides[:-1]] + [feature_channels[-1]]
            self.pyramid = ScalePyramid(
                spatial_dims,
                feature_channels,
                strides,
                pyramid_strides,
                map_channels,
                norm,
                residual,
            )
        # skip of each decoder level: index of the map at that stride, or a stem on the image
        self.skip_index = {s: i for i, s in enumerate(pyramid_strides[:-1])}
        self.stems = nn.ModuleDict(
            {
                str(s): conv_block(
                    spatial_dims, in_channels, at_stride[s], norm, residual, stride=s
                )
                for s in self.level_strides
                if s not in self.skip_index
            }
        )
        skip_channels = {
            s: map_channels[self.skip_index[s]] if s in self.skip_index else at_stride[s]
            for s in self.level_strides
        }
        self.stages = nn.ModuleList()  # deepest first
        c_in = map_channels[-1]
        for s in reversed(self.level_strides):
            self.stages.append(
                UpStage(spatial_dims, c_in, skip_channels[s], at_stride[s], norm, residual)
            )
            c_in = at_stride[s]
        conv = Conv[Conv.CONV, spatial_dims]
        head_levels = self.level_strides if deep_supervision else self.level_strides[:1]
        self.heads = nn.ModuleList(
            conv(at_stride[s], num_classes, kernel_size=1) for s in head_levels
        )

    def check_inputs(self, features: Sequence[Tensor], image: Tensor) -> None:
        """``ValueError`` naming the input unless maps and image match the constructor's layout."""
        rank = self.spatial_dims + 2
        if image.ndim != rank or image.shape[1] != self.in_channels:
            raise ValueError(
                f"SegmentationDecoder expects image [B, {self.in_channels}, *{self.spatial_dims} "
                f"sizes], got shape {list(image.shape)}"
            )
        if len(features) != len(self.feature_channels):
            raise ValueError(
                f"SegmentationDecoder expects {len(self.feature_channels)} feature maps, "
                f"got {len(features)}"
            )
        for i, (fmap, channels) in enumerate(zip(features, self.feature_channels)):
            if fmap.ndim != rank or fmap.shape[1] != channels or fmap.shape[0] != image.shape[0]:
                raise ValueError(
                    f"feature map {i} must be [{image.shape[0]}, {channels}, ...] with "
                    f"{self.spatial_dims} spatial axes, got shape {list(fmap.shape)}"
                )

    def forward(self, features: Sequence[Tensor], image: Tensor) -> Tensor | list[Tensor]:
        self.check_inputs(features, image)
        maps = self.pyramid(features) if self.pyramid is not None else list(features)
        size = image.shape[2:]
        x, stage_outputs = maps[-1], []
        for stage, stride in zip(self.stages, reversed(self.level_strides)):
            target = [math.ceil(n / stride) for n in size]
            if stride in self.skip_index:
                skip = fit_to(maps[self.skip_index[stride]], target)
            else:
                skip = self.stems[str(stride)](image)
            x = stage(x, skip)
            stage_outputs.insert(0, x)  # ends highest resolution first
        if self.deep_supervision and self.training:
            return [head(out) for head, out in zip(self.heads, stage_outputs)]
        return self.heads[0](stage_outputs[0])
