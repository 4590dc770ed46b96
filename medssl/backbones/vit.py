"""Vision Transformer encoder for 3D volumes and 2D images.

Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words: Transformers for Image Recognition
at Scale"; the 3D patch embedding and the multi-scale taps for a decoder follow UNETR
(Hatamizadeh et al. 2022). Pre-norm blocks; attention through
``scaled_dot_product_attention`` (flash / memory-efficient kernels where available).

Input ``[B, C, D, H, W]`` (or ``[B, C, H, W]``), every spatial size divisible by
``patch_size``. Position embedding learnable (defined on the ``img_size`` grid and
interpolated to other grids) or fixed sin-cos (computed for any grid). ``forward_features``:
the outputs of 4 evenly spaced blocks (the last block included), final-normed and reshaped to
maps ``[B, embed_dim, D/p, H/p, W/p]``; ``forward``: mean of the last block's normed tokens,
``[B, embed_dim]``. No class token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from medssl.backbones.base import Backbone, linear_ramp, stochastic_depth
from medssl.backbones.registry import register_backbone

# size -> (embed_dim, depth, num_heads), as ViT-S/B/L
VIT_PRESETS = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16)}
ViTSize = Literal["s", "b", "l"]  # the keys of VIT_PRESETS
PosEmbed = Literal["learnable", "sincos"]  # learnt on the img_size grid, or fixed sin-cos


def sincos_position_embedding(grid: Sequence[int], dim: int) -> Tensor:
    """Fixed sin-cos embedding ``[prod(grid), dim]`` of a row-major token grid: an equal even
    share of ``dim`` per axis (frequencies 1/10000^(k/half)), zeros in the remainder."""
    per_axis = 2 * (dim // (2 * len(grid)))
    half = per_axis // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / max(half, 1))
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = []
    for c in coords:
        angle = c.reshape(-1, 1) * omega
        parts += [angle.sin(), angle.cos()]
    embedding = torch.cat(parts, dim=1)
    return F.pad(embedding, (0, dim - embedding.shape[1])).float()


class Attention(nn.Module):
    """Multi-head self-attention: ``[B, N, C]`` -> ``[B, N, C]``."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.attn_drop = num_heads, attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = (
            self.qkv(x)
            .view(b, n, 3, self.num_heads, c // self.num_heads)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``; ``[B, N, C]``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: float,
    ):
        super().__init__()
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(drop),
            nn.Linear(hidden, dim),
            nn.Dropout(drop),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + stochastic_depth(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + stochastic_depth(self.mlp(self.norm2(x)), self.drop_path, self.training)


class ViTEncoder(Backbone):
    """Plain ViT with a convolutional patch embedding; see the module docstring for shapes."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        img_size: int | Sequence[int],
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        pos_embed: PosEmbed,
        drop_rate: float,
        attn_drop_rate: float,
        drop_path_rate: float,
        out_indices: Sequence[int] | None,
        use_checkpoint: bool,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if pos_embed not in get_args(PosEmbed):
            raise ValueError(f"pos_embed must be 'learnable' or 'sincos', got {pos_embed!r}")
        size = (img_size,) * spatial_dims if isinstance(img_size, int) else tuple(img_size)
        if len(size) != spatial_dims or any(s % patch_size for s in size):
            raise ValueError(
                f"img_size {img_size} needs {spatial_dims} sizes divisible by patch_size {patch_size}"
            )
        if out_indices is None:  # 4 evenly spaced taps ending at the last block
            out_indices = [math.ceil((i + 1) * depth / 4) - 1 for i in range(4)]
        if not out_indices or any(not 0 <= i < depth for i in out_indices):
            raise ValueError(f"out_indices {out_indices} must name blocks 0..{depth - 1}")
        self.spatial_dims, self.in_channels, self.patch_size = spatial_dims, in_channels, patch_size
        self.grid = tuple(s // patch_size for s in size)
        self.out_indices = sorted(out_indices)
        self.use_checkpoint = use_checkpoint
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.patch_embed = conv(in_channels, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, math.prod(self.grid), embed_dim))
            if pos_embed == "learnable"
            else None
        )
        self.pos_drop = nn.Dropout(drop_rate)
        drop_paths = linear_ramp(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            ViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, p)
            for p in drop_paths
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.feature_channels = [embed_dim] * len(self.out_indices)
        self.feature_strides = [patch_size] * len(self.out_indices)
        self.num_features = embed_dim
        self._init_weights()

    def _init_weights(self) -> None:
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def position_embedding(
        self, grid: Sequence[int], dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """``[1, prod(grid), embed_dim]`` for a token grid (interpolated if learnable and new)."""
        if self.pos_embed is None:
            return sincos_position_embedding(grid, self.num_features).to(
                device=device, dtype=dtype
            )[None]
        if tuple(grid) == self.grid:
            return self.pos_embed.to(dtype)
        table = self.pos_embed.transpose(1, 2).reshape(1, -1, *self.grid)
        mode = "trilinear" if self.spatial_dims == 3 else "bicubic"
        table = F.interpolate(table, size=tuple(grid), mode=mode, align_corners=False)
        return table.flatten(2).transpose(1, 2).to(dtype)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """``[B, C, *S]`` -> ``len(out_indices)`` maps ``[B, embed_dim, *S/patch_size]``."""
        self.check_input(x)
        if any(s % self.patch_size for s in x.shape[2:]):
            raise ValueError(
                f"ViT input spatial shape {list(x.shape[2:])} is not divisible by patch_size {self.patch_size}"
            )
        tokens = self.patch_embed(x)
        grid = tokens.shape[2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        tokens = self.pos_drop(tokens + self.position_embedding(grid, tokens.dtype, tokens.device))
        maps = []
        for i, block in enumerate(self.blocks[: self.out_indices[-1] + 1]):
            if self.use_checkpoint and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
            for _ in range(self.out_indices.count(i)):
                maps.append(self.norm(tokens).transpose(1, 2).reshape(x.shape[0], -1, *grid))
        return maps


def _vit(
    spatial_dims: int, size: str, depth: int | None, **options
) -> ViTEncoder:  # a factory's locals()
    key = size.lower()
    if key not in VIT_PRESETS:
        raise ValueError(f"vit size {size!r} unknown; choose one of {', '.join(VIT_PRESETS)}")
    embed_dim, preset_depth, num_heads = VIT_PRESETS[key]
    return ViTEncoder(
        spatial_dims=spatial_dims,
        embed_dim=embed_dim,
        depth=preset_depth if depth is None else depth,
        num_heads=num_heads,
        **options,
    )


@register_backbone("vit3d")
def vit3d(
    size: ViTSize = "b",
    in_channels: int = 1,
    img_size: int | Sequence[int] = 96,
    patch_size: int = 16,
    depth: int | None = None,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    pos_embed: PosEmbed = "learnable",
    drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    out_indices: Sequence[int] | None = None,
    use_checkpoint: bool = False,
) -> ViTEncoder:
    """3D ViT; ``size`` s/b/l = (width, depth, heads) (384, 12, 6) / (768, 12, 12) / (1024, 24, 16).

    ``depth`` overrides the preset depth; ``img_size`` fixes the learnable position grid
    (other input sizes interpolate it); ``out_indices`` picks the blocks returned by
    ``forward_features`` (default 4 evenly spaced). Input ``[B, in_channels, D, H, W]``.
    """
    return _vit(3, **locals())


@register_backbone("vit2d")
def vit2d(
    size: ViTSize = "b",
    in_channels: int = 1,
    img_size: int | Sequence[int] = 224,
    patch_size: int = 16,
    depth: int | None = None,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    pos_embed: PosEmbed = "learnable",
    drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    out_indices: Sequence[int] | None = None,
    use_checkpoint: bool = False,
) -> ViTEncoder:
    """2D ViT; arguments as ``vit3d``. Input ``[B, in_channels, H, W]``."""
    return _vit(2, **locals())
