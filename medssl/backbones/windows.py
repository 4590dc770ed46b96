"""Window operations of the Swin Transformer (Liu et al. 2021), for 2D and 3D maps.

Channels-last maps ``[B, *S, C]`` are cut into non-overlapping windows (``window_partition``)
and put back (``window_merge``); a cyclic shift of half a window links neighbouring windows,
and ``shifted_window_mask`` keeps attention inside the regions the shift brought together.
The conventions (row-major token order, -100 mask value, small axes as one unshifted window)
are those of SwinUNETR, so its published weights compute the same function here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# Value of the shifted-window region mask: what the published weights were trained with.
_REGION_MASK_VALUE = -100.0


def window_partition(x: Tensor, window: Sequence[int]) -> Tensor:
    """``[B, *S, C]`` (``S`` divisible by ``window``) -> windows ``[B * nW, prod(window), C]``,
    batch-major, windows and the tokens inside each in row-major order."""
    b, *sizes, c = x.shape
    nd = len(window)
    split = [b]
    for s, w in zip(sizes, window):
        split += [s // w, w]
    grid_axes = [1 + 2 * i for i in range(nd)]
    inner_axes = [2 + 2 * i for i in range(nd)]
    x = x.reshape(*split, c).permute(0, *grid_axes, *inner_axes, 2 * nd + 1)
    return x.reshape(-1, math.prod(window), c)


def window_merge(windows: Tensor, window: Sequence[int], sizes: Sequence[int]) -> Tensor:
    """Inverse of ``window_partition``: ``[B * nW, n, C]`` -> ``[B, *sizes, C]``."""
    nd = len(window)
    grid = [s // w for s, w in zip(sizes, window)]
    x = windows.reshape(-1, *grid, *window, windows.shape[-1])
    order = [0] + [a for i in range(nd) for a in (1 + i, 1 + nd + i)] + [2 * nd + 1]
    return x.permute(order).reshape(-1, *sizes, windows.shape[-1])


def effective_window(
    sizes: Sequence[int], window: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Window and shift used on a map of ``sizes``: an axis no longer than the window is one
    window along that axis, without shift (as SwinUNETR)."""
    win = tuple(min(s, w) for s, w in zip(sizes, window))
    shift = tuple(0 if s <= w else w // 2 for s, w in zip(sizes, window))
    return win, shift


def shifted_window_mask(
    padded: Sequence[int], window: Sequence[int], shift: Sequence[int], device: torch.device
) -> Tensor:
    """Additive mask ``[nW, n, n]`` (0 or -100) keeping attention inside the regions that a
    cyclic shift by ``shift`` brought together in one window."""
    label = torch.zeros(padded, dtype=torch.long, device=device)
    for axis, (size, w, s) in enumerate(zip(padded, window, shift)):
        if s == 0:  # no roll along this axis: nothing wrapped around
            continue
        axis_label = torch.zeros(size, dtype=torch.long, device=device)
        axis_label[size - w : size - s] = 1
        axis_label[size - s :] = 2
        view = [1] * len(padded)
        view[axis] = size
        label = label * 3 + axis_label.view(view)
    windows = window_partition(label[None, ..., None], window).squeeze(-1)  # [nW, n]
    differs = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(differs.shape, device=device).masked_fill_(differs, _REGION_MASK_VALUE)


def relative_position_index(window: Sequence[int]) -> Tensor:
    """``[n, n]`` index into the bias table of every (query, key) offset inside a window."""
    grids = torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")
    coords = torch.stack(grids).flatten(1)  # [nd, n]
    offsets = coords[:, :, None] - coords[:, None, :]  # [nd, n, n]
    index = torch.zeros(offsets.shape[1:], dtype=torch.long)
    for axis, w in enumerate(window):  # mixed radix with digit range 2w - 1 per axis
        index = index * (2 * w - 1) + offsets[axis] + (w - 1)
    return index


def end_padding(pad: Sequence[int]) -> list[int]:
    """``F.pad`` argument adding ``pad[i]`` zeros at the far end of the i-th of the last axes."""
    return [p for axis_pad in reversed(pad) for p in (0, axis_pad)]
