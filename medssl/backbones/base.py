"""The surface every medssl encoder has (DESIGN.md section 3).

A backbone maps an image batch ``[B, C, D, H, W]`` (3D) or ``[B, C, H, W]`` (2D) to

* ``forward_features(x)``: a list of feature maps, highest resolution first; map ``i`` has
  ``feature_channels[i]`` channels and is ``feature_strides[i]`` times smaller than the input
  along every spatial axis (rounded up), e.g. ``[B, feature_channels[i], D/s, H/s, W/s]``.
  Decoders and detectors consume this list.
* ``forward(x)``: one pooled vector per sample, ``[B, num_features]`` (global average of the
  last feature map unless a backbone says otherwise).

Backbones are built only through ``medssl.backbones.create_backbone``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


class Backbone(nn.Module, ABC):
    """Base class fixing the encoder contract; subclasses implement ``forward_features``.

    Attributes (set by every subclass in ``__init__``):
        spatial_dims: 2 or 3.
        in_channels: channels ``C`` of the input.
        num_features: length of the pooled vector returned by ``forward``.
        feature_channels: channels of each map of ``forward_features``.
        feature_strides: downsampling factor of each map of ``forward_features``.
    """

    spatial_dims: int
    in_channels: int
    num_features: int
    feature_channels: list[int]
    feature_strides: list[int]

    @abstractmethod
    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Multi-scale feature maps ``[B, feature_channels[i], *spatial/feature_strides[i]]``."""

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features ``[B, num_features]`` of ``x`` ``[B, C, *spatial]``."""
        return global_average(self.forward_features(x)[-1])

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``[B, in_channels, *spatial_dims sizes]``."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            axes = "D, H, W" if self.spatial_dims == 3 else "H, W"
            raise ValueError(
                f"{type(self).__name__} expects input [B, {self.in_channels}, {axes}], "
                f"got shape {list(x.shape)}"
            )


def global_average(feature_map: Tensor) -> Tensor:
    """Mean over every spatial axis: ``[B, C, *spatial]`` -> ``[B, C]``."""
    return feature_map.flatten(2).mean(dim=2)


def stochastic_depth(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Drop whole residual branches per sample (Huang et al. 2016, "Deep Networks with
    Stochastic Depth"); survivors are scaled by ``1 / (1 - drop_prob)``. ``x``: ``[B, ...]``."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep).div_(keep)


def linear_ramp(last: float, count: int) -> list[float]:
    """``count`` values rising linearly from 0 to ``last``: per-block stochastic depth rates."""
    return [last * i / (count - 1) if count > 1 else 0.0 for i in range(count)]
