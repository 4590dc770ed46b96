"""A volume encoder made of a 2D encoder and an attention aggregator over its slice embeddings.

Joint 2D/3D pretraining (intra-inter contrastive clustering; see
:mod:`medssl.methods.joint2d3d`) trains one 2D encoder on 2D images and on slices of
volumes, and a small transformer that assembles a volume's slice embeddings into a volume
embedding (Vaswani et al. 2017, standard pre-norm attention; the slice position enters as a
sinusoidal encoding of its normalised position in ``[0, 1]`` along the slice axis).

:class:`SliceAggregator`: slice embeddings ``[B, S, D]`` and positions ``[B, S]`` (optionally a
mask ``[B, S]``: those slices are replaced by a learned mask token) -> volume embedding
``[B, D]`` (a learned summary token's output) and per-slice tokens ``[B, S, D]``.

:class:`SliceStackEncoder` follows the backbone surface for 3D input ``[B, C, X, Y, Z]``:
``forward`` samples ``num_slices`` evenly spaced slices across ``slice_axis`` (all slices when
``num_slices`` is None), encodes each with the 2D encoder and returns the aggregated volume
embedding ``[B, num_features]``. ``forward_features`` returns the 2D encoder's maps of the
same slices restacked along the slice axis: map ``i`` is ``[B, C_i, x/s_i, y/s_i, S]`` for
``slice_axis=2`` (the in-plane axes are downsampled by ``feature_strides[i]``, the slice
axis holds the S sampled slices, not downsampled). It is built directly (from an artifact by
``medssl.inference.encoder.build_encoder(artifact, volume=True)``), not through the registry.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from medssl.backbones.base import Backbone


def position_encoding(positions: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of continuous positions: ``[B, S]`` in ``[0, 1]`` -> ``[B, S, dim]``."""
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, device=positions.device, dtype=torch.float32)
        * (-math.log(1000.0) / max(half, 1))
    )
    angles = positions.float()[..., None] * 100.0 * freqs  # positions span ~100 slice-units
    enc = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return nn.functional.pad(enc, (0, dim - 2 * half))


class SliceAggregator(nn.Module):
    """Attention over slice embeddings with positional encoding; a summary token pools them.

    Args:
        dim: slice embedding width D (the 2D encoder's ``num_features``).
        depth: transformer layers.
        num_heads: attention heads (must divide ``dim``).
        mlp_ratio: hidden width of each layer's MLP, as a multiple of ``dim``.
    """

    def __init__(
        self, dim: int, depth: int = 1, num_heads: int = 4, mlp_ratio: float = 2.0
    ) -> None:
        super().__init__()
        if dim < 1 or depth < 1 or num_heads < 1 or dim % num_heads:
            raise ValueError(
                f"SliceAggregator needs dim >= 1, depth >= 1 and num_heads dividing dim; got dim {dim}, depth {depth}, num_heads {num_heads}"
            )
        self.dim = dim
        self.position = nn.Linear(dim, dim)
        self.summary_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.summary_token, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim,
            num_heads,
            int(dim * mlp_ratio),
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, slices: Tensor, positions: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``[B, S, D]``, ``[B, S]``, mask ``[B, S]`` -> (volume ``[B, D]``, tokens ``[B, S, D]``)."""
        if slices.ndim != 3 or slices.shape[-1] != self.dim:
            raise ValueError(f"slices must be [B, S, {self.dim}], got {tuple(slices.shape)}")
        if positions.shape != slices.shape[:2]:
            raise ValueError(
                f"positions must be [B, S] = {tuple(slices.shape[:2])}, got {tuple(positions.shape)}"
            )
        x = slices
        if mask is not None:
            if mask.shape != slices.shape[:2]:
                raise ValueError(
                    f"mask must be [B, S] = {tuple(slices.shape[:2])}, got {tuple(mask.shape)}"
                )
            x = torch.where(mask[..., None].bool(), self.mask_token.to(x.dtype), x)
        x = x + self.position(position_encoding(positions, self.dim).to(x.dtype))
        x = torch.cat([self.summary_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x))
        return x[:, 0], x[:, 1:]


def even_slices(depth: int, count: int | None) -> Tensor:
    """Indices of ``count`` evenly spaced slices of ``depth`` (all when None): ``[count]`` int64."""
    if depth < 1:
        raise ValueError(f"a volume with {depth} slices")
    if count is None:
        return torch.arange(depth)
    if count < 1:
        raise ValueError(f"num_slices must be >= 1, got {count}")
    return torch.linspace(0, depth - 1, count).round().long()


def normalised_positions(index: Tensor, depth: int) -> Tensor:
    """Slice indices -> positions in ``[0, 1]`` along the axis (float32)."""
    return index.float() / max(depth - 1, 1)


class SliceStackEncoder(Backbone):
    """A 2D encoder + :class:`SliceAggregator` serving 3D input ``[B, C, X, Y, Z]`` (module doc).

    Args:
        encoder2d: a 2D backbone (``spatial_dims == 2``).
        aggregator: its aggregator (``dim == encoder2d.num_features``).
        num_slices: slices sampled evenly across ``slice_axis`` (None: every slice).
        slice_axis: 0, 1 or 2 of the spatial axes (2: axial in a RAS store).
    """

    def __init__(
        self,
        encoder2d: Backbone,
        aggregator: SliceAggregator,
        num_slices: int | None = 16,
        slice_axis: int = 2,
    ) -> None:
        super().__init__()
        if encoder2d.spatial_dims != 2:
            raise ValueError(
                f"SliceStackEncoder needs a 2D encoder, got spatial_dims {encoder2d.spatial_dims}"
            )
        if aggregator.dim != encoder2d.num_features:
            raise ValueError(
                f"aggregator width {aggregator.dim} differs from the encoder's num_features {encoder2d.num_features}"
            )
        if slice_axis not in (0, 1, 2) or (num_slices is not None and num_slices < 1):
            raise ValueError(
                f"slice_axis must be 0, 1 or 2 and num_slices >= 1; got {slice_axis}, {num_slices}"
            )
        self.encoder2d, self.aggregator = encoder2d, aggregator
        self.num_slices, self.slice_axis = num_slices, slice_axis
        self.spatial_dims, self.in_channels = 3, encoder2d.in_channels
        self.num_features = encoder2d.num_features
        self.feature_channels = list(encoder2d.feature_channels)
        self.feature_strides = list(encoder2d.feature_strides)  # in-plane only (module doc)

    def slices(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, C, X, Y, Z]`` -> sampled slices ``[B, S, C, h, w]`` and positions ``[B, S]``."""
        self.check_input(x)
        axis = 2 + self.slice_axis
        depth = x.shape[axis]
        index = even_slices(depth, self.num_slices).to(x.device)
        stack = x.index_select(axis, index).movedim(axis, 1)  # [B, S, C, h, w]
        positions = normalised_positions(index, depth).expand(x.shape[0], -1)
        return stack, positions

    def forward(self, x: Tensor) -> Tensor:
        stack, positions = self.slices(x)
        b, s = stack.shape[:2]
        embeddings = self.encoder2d(stack.flatten(0, 1)).unflatten(0, (b, s))  # [B, S, D]
        volume, _ = self.aggregator(embeddings, positions)
        return volume

    def forward_features(self, x: Tensor) -> list[Tensor]:
        stack, _ = self.slices(x)
        b, s = stack.shape[:2]
        maps = self.encoder2d.forward_features(stack.flatten(0, 1))
        # [B*S, C, h, w] -> [B, C, h, w, S], then the slice axis back where it came from
        return [
            m.unflatten(0, (b, s)).movedim(1, -1).movedim(-1, 2 + self.slice_axis) for m in maps
        ]
