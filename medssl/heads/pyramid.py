"""Turn an encoder's feature maps into a pyramid of distinct strides (UNETR-style projections).

CNN and Swin encoders already return one map per stride (``[1, 2, 4, ...]`` or ``[2, 4, ...]``).
A plain ViT returns several transformer depths that all sit at the patch stride ``p``; UNETR
(Hatamizadeh et al. 2022, "UNETR: Transformers for 3D Medical Image Segmentation") projects the
``i``-th of ``n`` such maps to stride ``p / 2^(n-1-i)`` with a chain of transposed convolutions, so
a U-Net decoder sees ``[p/8, p/4, p/2, p]`` for four maps. ViTDet's simple feature pyramid (Li et al.
2022, "Exploring Plain Vision Transformer Backbones for Object Detection") also pools down; the
detector uses that form (``[p/4, p/2, p, 2p]``). One module, ``ScalePyramid``, does both, and
the segmentation decoder and the detector's FPN share it.

Also the conv block both heads use (conv-norm-LeakyReLU twice, or its residual form, nnU-Net).
Pure torch + MONAI network blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.blocks import UnetBasicBlock, UnetResBlock, UnetrPrUpBlock
from monai.networks.layers.factories import Conv, Pool
from torch import Tensor, nn

# norm option -> MONAI norm name and arguments (affine instance norm as nnU-Net)
NORMS: dict[str, tuple[str, dict[str, object]]] = {
    "instance": ("instance", {"affine": True}),
    "batch": ("batch", {}),
}


def norm_name(norm: str) -> tuple[str, dict[str, object]]:
    """MONAI's ``norm_name`` for ``norm`` ("instance" or "batch"); ``ValueError`` otherwise."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
    return NORMS[norm]


def conv_block(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    norm: str,
    residual: bool = False,
    stride: int = 1,
) -> nn.Module:
    """Two 3x3 conv-norm-LeakyReLU layers (``residual``: with an identity/1x1 shortcut).

    ``[B, in_channels, *S]`` -> ``[B, out_channels, *ceil(S / stride)]``.
    """
    block = UnetResBlock if residual else UnetBasicBlock
    return block(
        spatial_dims,
        in_channels,
        out_channels,
        kernel_size=3,
        stride=stride,
        norm_name=norm_name(norm),
    )


def log2_exact(value: int, what: str) -> int:
    """``k`` with ``2**k == value``; ``ValueError`` naming ``what`` unless ``value`` is a power of 2."""
    if not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ValueError(f"{what} must be a power of 2, got {value!r}")
    return value.bit_length() - 1


def shares_one_stride(feature_strides: Sequence[int]) -> bool:
    """True for transformer outputs: several maps, all at one stride (ViT)."""
    return len(feature_strides) > 1 and len(set(feature_strides)) == 1


def unetr_strides(stride: int, count: int, deepest: int | None = None) -> list[int]:
    """Target strides for ``count`` maps at one ``stride``: the deepest goes to ``deepest``
    (default ``stride``), each shallower one to half the next, e.g. ``(16, 4) -> [2, 4, 8, 16]``,
    ``(16, 4, deepest=32) -> [4, 8, 16, 32]``."""
    deepest = stride if deepest is None else deepest
    log2_exact(stride, "the encoder's feature stride")
    levels = log2_exact(deepest, "the deepest pyramid stride")
    if count - 1 > levels:
        raise ValueError(
            f"cannot spread {count} maps below stride {deepest}: the shallowest would be "
            f"finer than stride 1"
        )
    return [deepest >> (count - 1 - i) for i in range(count)]


class ScalePyramid(nn.Module):
    """Resample map ``i`` from ``in_strides[i]`` to ``out_strides[i]`` and ``out_channels[i]``.

    Finer target: UNETR projection (transposed conv x2 per octave, a conv block after each but
    the first; MONAI ``UnetrPrUpBlock``). Coarser target: max-pool by 2 per octave (ViTDet), then
    a 1x1 conv. Same stride: identity, or a 1x1 conv when the channels change.

    ``forward(maps)``: ``[B, in_channels[i], *S/in_strides[i]]`` ->
    ``[B, out_channels[i], *S/out_strides[i]]`` for every ``i`` (sizes that were rounded up by
    the encoder stay rounded up, e.g. 3 voxels at stride 16 become 6 at stride 8).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        out_strides: Sequence[int],
        out_channels: Sequence[int],
        norm: str = "instance",
        residual: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not len(in_channels) == len(in_strides) == len(out_strides) == len(out_channels):
            raise ValueError(
                f"one entry per map expected: in_channels {list(in_channels)}, in_strides "
                f"{list(in_strides)}, out_strides {list(out_strides)}, out_channels "
                f"{list(out_channels)}"
            )
        norm_name(norm)
        self.spatial_dims = spatial_dims
        self.out_strides = list(out_strides)
        self.out_channels = list(out_channels)
        self.projections = nn.ModuleList(
            self._projection(c_in, s_in, s_out, c_out, norm, residual)
            for c_in, s_in, s_out, c_out in zip(in_channels, in_strides, out_strides, out_channels)
        )

    def _projection(
        self, c_in: int, s_in: int, s_out: int, c_out: int, norm: str, residual: bool
    ) -> nn.Module:
        octaves = log2_exact(s_out, "a target stride") - log2_exact(s_in, "an encoder stride")
        if octaves < 0:
            return UnetrPrUpBlock(
                self.spatial_dims,
                c_in,
                c_out,
                num_layer=-octaves - 1,
                kernel_size=3,
                stride=1,
                upsample_kernel_size=2,
                norm_name=norm_name(norm),
                conv_block=True,
                res_block=residual,
            )
        pool = Pool[Pool.MAX, self.spatial_dims]
        conv = Conv[Conv.CONV, self.spatial_dims]
        layers: list[nn.Module] = [pool(kernel_size=2, stride=2, ceil_mode=True)] * octaves
        if c_in != c_out:
            layers.append(conv(c_in, c_out, kernel_size=1))
        return nn.Sequential(*layers)  # empty Sequential: identity

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        if len(maps) != len(self.projections):
            raise ValueError(
                f"ScalePyramid expects {len(self.projections)} feature maps, got {len(maps)}"
            )
        return [project(fmap) for project, fmap in zip(self.projections, maps)]
