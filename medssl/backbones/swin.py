"""Swin Transformer encoder as used by SwinUNETR and VoCo, for 3D volumes and 2D images.

Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows";
Hatamizadeh et al. 2022, "Swin UNETR: Swin Transformers for Semantic Segmentation of Brain
Tumors in MRI Images"; the v2 residual convolutions of He et al. 2023 ("SwinUNETR-V2"), which
the VoCo weights (Wu et al. 2024) use.

Parameter and buffer names equal those of MONAI's ``SwinUNETR(...).swinViT``
(``patch_embed.proj``, ``layers1.0.blocks.0.attn.qkv``, ``layers1.0.downsample.reduction``,
``layers1c.0.layer.conv1.conv`` ...), so MONAI and VoCo Swin weights load with
``load_state_dict(strict=True)`` once a ``swinViT.`` / ``module.`` prefix is stripped
(``tools/convert_monai_swin.py``), and the loaded model computes the same hidden states.

Window attention runs through ``scaled_dot_product_attention`` with the relative position
bias (plus, in shifted blocks, the -100 region mask) as an additive ``attn_mask`` in the query
dtype, so it is bf16-safe and uses fused kernels where the platform has them.

Input ``[B, C, D, H, W]`` (or ``[B, C, H, W]``); any size (padded internally). Output of
``forward_features``: 5 maps, strides 2, 4, 8, 16, 32, channels ``feature_size * (1, 2, 4, 8,
16)``, each layer-normalised over channels (``normalize=True``, as SwinUNETR). ``forward``:
``[B, 16 * feature_size]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from medssl.backbones.base import Backbone, linear_ramp, stochastic_depth
from medssl.backbones.conv import Conv3d
from medssl.backbones.registry import register_backbone
from medssl.backbones.windows import (
    effective_window,
    end_padding,
    relative_position_index,
    shifted_window_mask,
    window_merge,
    window_partition,
)

SWIN_FEATURE_SIZES = {"b": 48, "l": 96, "h": 192}
SwinSize = Literal["b", "l", "h"]  # the keys of SWIN_FEATURE_SIZES
# Order in which PatchMerging concatenates the 2x2(x2) neighbours (offsets along D, H, W /
# H, W); fixed by the published weights' reduction matrices.
_MERGE_OFFSETS = {
    3: ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)),
    2: ((0, 0), (1, 0), (0, 1), (1, 1)),
}


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Sequence[int],
        qkv_bias: bool,
        attn_drop: float,
        proj_drop: float,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        table_rows = math.prod(2 * w - 1 for w in window)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_rows, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, windows: Tensor, region_mask: Tensor | None) -> Tensor:
        """``windows`` ``[B * nW, n, C]``; ``region_mask`` ``[nW, n, n]`` or None -> ``[B * nW, n, C]``."""
        bnw, n, c = windows.shape
        heads, head_dim = self.num_heads, c // self.num_heads
        q, k, v = (
            self.qkv(windows).view(bnw, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        )
        # A window cut to fewer than the full window's tokens uses the first n rows/columns of
        # the index, as SwinUNETR does; the published weights were trained that way.
        index = self.relative_position_index[:n, :n].reshape(-1)
        bias = (
            self.relative_position_bias_table[index].view(n, n, heads).permute(2, 0, 1).to(q.dtype)
        )
        dropout = self.attn_drop if self.training else 0.0
        if region_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None], dropout_p=dropout)
        else:
            # Fold the window axis into the head axis so the [nW, heads, n, n] mask broadcasts
            # over the batch instead of being copied for every sample.
            nw = region_mask.shape[0]
            mask = (bias[None] + region_mask.to(q.dtype)[:, None]).reshape(1, nw * heads, n, n)
            q, k, v = (t.reshape(bnw // nw, nw * heads, n, head_dim) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
            out = out.view(bnw, heads, n, head_dim)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(bnw, n, c)))


class SwinMLP(nn.Module):
    """Two-layer GELU MLP of a Swin block: ``[..., C]`` -> ``[..., C]``."""

    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.linear2(self.drop(F.gelu(self.linear1(x)))))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP on a channels-last map ``[B, *S, C]``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Sequence[int],
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: float,
    ):
        super().__init__()
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window, qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwinMLP(dim, int(dim * mlp_ratio), drop)

    def forward(
        self, x: Tensor, window: tuple[int, ...], shift: tuple[int, ...], region_mask: Tensor | None
    ) -> Tensor:
        sizes = x.shape[1:-1]
        nd = len(sizes)
        h = self.norm1(x)
        pad = [(w - s % w) % w for s, w in zip(sizes, window)]
        if any(pad):  # zeros after the norm, at the far end of each axis
            h = F.pad(h, [0, 0, *end_padding(pad)])
        padded = h.shape[1:-1]
        axes = tuple(range(1, nd + 1))
        if any(shift):
            h = torch.roll(h, shifts=tuple(-s for s in shift), dims=axes)
        h = window_merge(self.attn(window_partition(h, window), region_mask), window, padded)
        if any(shift):
            h = torch.roll(h, shifts=shift, dims=axes)
        if any(pad):
            h = h[(slice(None), *(slice(0, s) for s in sizes))]
        x = x + stochastic_depth(h, self.drop_path, self.training)
        return x + stochastic_depth(self.mlp(self.norm2(x)), self.drop_path, self.training)


class PatchMerging(nn.Module):
    """Concatenate each 2x2(x2) neighbourhood, normalise, project: ``[B, *S, C]`` -> ``[B, *S/2, 2C]``."""

    def __init__(self, dim: int, spatial_dims: int):
        super().__init__()
        self.offsets = _MERGE_OFFSETS[spatial_dims]
        self.norm = nn.LayerNorm(len(self.offsets) * dim)
        self.reduction = nn.Linear(len(self.offsets) * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        odd = [s % 2 for s in x.shape[1:-1]]
        if any(odd):
            x = F.pad(x, [0, 0, *end_padding(odd)])
        parts = [x[(slice(None), *(slice(o, None, 2) for o in offset))] for offset in self.offsets]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


class SwinStage(nn.Module):
    """``depth`` Swin blocks alternating plain and shifted windows, then patch merging:
    ``[B, C, *S]`` -> ``[B, 2C, *S/2]``."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: tuple[int, ...],
        drop_paths: Sequence[float],
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        use_checkpoint: bool,
    ):
        super().__init__()
        self.window = window
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, mlp_ratio, qkv_bias, drop, attn_drop, p)
            for p in drop_paths[:depth]
        )
        self.downsample = PatchMerging(dim, len(window))

    def forward(self, x: Tensor) -> Tensor:
        sizes = x.shape[2:]
        window, shift = effective_window(sizes, self.window)
        padded = [math.ceil(s / w) * w for s, w in zip(sizes, window)]
        mask = shifted_window_mask(padded, window, shift, x.device) if any(shift) else None
        x = x.movedim(1, -1)
        no_shift = (0,) * len(window)
        for i, block in enumerate(self.blocks):
            args = (window, shift, mask) if i % 2 else (window, no_shift, None)
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, *args, use_reentrant=False)
            else:
                x = block(x, *args)
        return self.downsample(x).movedim(-1, 1)


class ResidualConvUnit(nn.Module):
    """SwinUNETR-V2 residual unit before each stage: conv-IN-LReLU-conv-IN + skip, LReLU;
    ``[B, C, *S]`` -> same. Parameter names follow MONAI (``layer.conv1.conv.weight``)."""

    def __init__(self, dim: int, spatial_dims: int):
        super().__init__()
        conv = Conv3d if spatial_dims == 3 else nn.Conv2d
        self.layer = nn.ModuleDict(
            {
                name: nn.ModuleDict({"conv": conv(dim, dim, 3, padding=1, bias=False)})
                for name in ("conv1", "conv2")
            }
        )

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(_instance_norm(self.layer["conv1"]["conv"](x)), 0.01)
        h = _instance_norm(self.layer["conv2"]["conv"](h))
        return F.leaky_relu(h + x, 0.01)


def _instance_norm(x: Tensor) -> Tensor:
    return F.instance_norm(x, eps=1e-5)


def _channel_layer_norm(x: Tensor) -> Tensor:
    """Layer norm over channels without affine parameters: ``[B, C, *S]`` -> same."""
    return F.layer_norm(x.movedim(1, -1), x.shape[1:2]).movedim(-1, 1)


class SwinEncoder(Backbone):
    """Four-stage Swin Transformer encoder (the ``swinViT`` of SwinUNETR); see module docs."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        feature_size: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        window_size: int | Sequence[int],
        patch_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_rate: float,
        attn_drop_rate: float,
        drop_path_rate: float,
        normalize: bool,
        use_v2: bool,
        use_checkpoint: bool,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(
                f"depths and num_heads need 4 entries (one per stage), got {depths}, {num_heads}"
            )
        window = (
            (window_size,) * spatial_dims if isinstance(window_size, int) else tuple(window_size)
        )
        if len(window) != spatial_dims:
            raise ValueError(f"window_size {window_size} does not have {spatial_dims} entries")
        self.spatial_dims, self.in_channels, self.patch_size = spatial_dims, in_channels, patch_size
        self.normalize, self.use_v2 = normalize, use_v2
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.patch_embed = nn.Module()
        self.patch_embed.proj = conv(in_channels, feature_size, patch_size, stride=patch_size)
        self.pos_drop = nn.Dropout(drop_rate)
        drop_paths = linear_ramp(drop_path_rate, sum(depths))
        for i in range(4):
            dim = feature_size * 2**i
            stage = SwinStage(
                dim,
                depths[i],
                num_heads[i],
                window,
                drop_paths[sum(depths[:i]) :],
                mlp_ratio,
                qkv_bias,
                drop_rate,
                attn_drop_rate,
                use_checkpoint,
            )
            setattr(self, f"layers{i + 1}", nn.ModuleList([stage]))
            if use_v2:
                setattr(
                    self, f"layers{i + 1}c", nn.ModuleList([ResidualConvUnit(dim, spatial_dims)])
                )
        self.feature_channels = [feature_size * 2**i for i in range(5)]
        self.feature_strides = [patch_size * 2**i for i in range(5)]
        self.num_features = self.feature_channels[-1]
        self.apply(_init_linear)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """``[B, C, *S]`` -> 5 maps ``[B, feature_size * 2**i, *S / (patch_size * 2**i)]``."""
        self.check_input(x)
        pad = [(-s) % self.patch_size for s in x.shape[2:]]
        if any(pad):
            x = F.pad(x, end_padding(pad))
        h = self.pos_drop(self.patch_embed.proj(x))
        outs = [h]
        for i in range(1, 5):
            if self.use_v2:
                h = getattr(self, f"layers{i}c")[0](h)
            h = getattr(self, f"layers{i}")[0](h)
            outs.append(h)
        return [_channel_layer_norm(o) for o in outs] if self.normalize else outs


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _swin(spatial_dims: int, size: str, **options) -> SwinEncoder:  # options: a factory's locals()
    key = size.lower()
    if key not in SWIN_FEATURE_SIZES:
        raise ValueError(
            f"swin size {size!r} unknown; choose one of {', '.join(SWIN_FEATURE_SIZES)}"
        )
    options["depths"], options["num_heads"] = tuple(options["depths"]), tuple(options["num_heads"])
    return SwinEncoder(spatial_dims=spatial_dims, feature_size=SWIN_FEATURE_SIZES[key], **options)


@register_backbone("swin3d")
def swin3d(
    size: SwinSize = "b",
    in_channels: int = 1,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int | Sequence[int] = 7,
    patch_size: int = 2,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    normalize: bool = True,
    use_v2: bool = False,
    use_checkpoint: bool = False,
) -> SwinEncoder:
    """3D Swin encoder of SwinUNETR/VoCo; ``size`` b/l/h = feature size 48/96/192.

    ``use_v2`` adds the SwinUNETR-V2 residual convolutions (needed for VoCo weights);
    ``use_checkpoint`` recomputes each block in the backward pass to save memory.
    Input ``[B, in_channels, D, H, W]``; ``forward`` -> ``[B, 16 * feature_size]``.
    """
    return _swin(3, **locals())


@register_backbone("swin2d")
def swin2d(
    size: SwinSize = "b",
    in_channels: int = 1,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int | Sequence[int] = 7,
    patch_size: int = 2,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    normalize: bool = True,
    use_v2: bool = False,
    use_checkpoint: bool = False,
) -> SwinEncoder:
    """2D Swin encoder (SwinUNETR with ``spatial_dims=2``); arguments as ``swin3d``.
    Input ``[B, in_channels, H, W]``; ``forward`` -> ``[B, 16 * feature_size]``."""
    return _swin(2, **locals())
