"""Projection heads of the SSL methods: a small MLP from pooled features to the loss space.

SimCLR (Chen et al. 2020) showed a nonlinear projector before the contrastive loss helps
the backbone's features; SwAV (Caron et al. 2020) and VoCo (Wu et al. CVPR 2024) use the same
kind of head. ``[N, in_dim] -> [N, out_dim]``.

Hidden norm: ``"layer"`` (default) normalises each sample on its own, so a step's result
does not depend on how the global batch is split over ranks (BatchNorm would, unless synced,
and SyncBatchNorm has no CPU/gloo path); ``"batch"`` is the papers' choice; ``"none"``.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

from torch import Tensor, nn

Norm = Literal["layer", "batch", "none"]


def _norm(kind: Norm, width: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(width)
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"projector norm {kind!r}: expected 'layer', 'batch' or 'none'")


class MLPProjector(nn.Module):
    """``layers`` linear maps with norm + GELU between them: ``[N, in_dim] -> [N, out_dim]``."""

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, norm: Norm = "layer"
    ) -> None:
        super().__init__()
        if layers < 1 or min(in_dim, hidden_dim, out_dim) < 1:
            raise ValueError(
                f"projector needs layers >= 1 and positive widths, got {layers}, {in_dim}, {hidden_dim}, {out_dim}"
            )
        widths = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
        blocks: list[nn.Module] = []
        for i, (a, b) in enumerate(pairwise(widths)):
            blocks.append(nn.Linear(a, b))
            if i < layers - 1:
                blocks += [_norm(norm, b), nn.GELU()]
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2:
            raise ValueError(f"projector input must be [N, features], got {tuple(x.shape)}")
        return self.net(x)


class VoCoProjector(nn.Module):
    """VoCo's head (Wu et al. CVPR 2024, both released codes): three linear maps with
    BatchNorm *without* affine parameters or running statistics + ReLU between them.

    BatchNorm always normalises by the current batch (every crop and base of the step), in
    training and evaluation alike, as the reference's ``track_running_stats=False`` does.
    ``[N, in_dim] -> [N, out_dim]``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, out_dim) < 1:
            raise ValueError(
                f"projector needs positive widths, got {in_dim}, {hidden_dim}, {out_dim}"
            )
        blocks: list[nn.Module] = []
        for a, b in ((in_dim, hidden_dim), (hidden_dim, hidden_dim)):
            blocks += [
                nn.Linear(a, b),
                nn.BatchNorm1d(b, affine=False, track_running_stats=False),
                nn.ReLU(),
            ]
        self.net = nn.Sequential(*blocks, nn.Linear(hidden_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(
                f"projector input must be [N >= 2, features] (BatchNorm over N), got {tuple(x.shape)}"
            )
        return self.net(x)
