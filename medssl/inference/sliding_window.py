"""Sliding-window prediction over a whole 2D or 3D image, windows blended by importance weights.

A network trained on patches of ``roi_size`` is run on overlapping windows of the image;
each voxel's output is the weighted mean of the windows that cover it. Gaussian weights
(centre of a window counts most, where its receptive field is complete) follow nnU-Net
(Isensee et al., Nature Methods 2021). Window placement and the weight map match MONAI's
``sliding_window_inference`` (``mode="gaussian"``/``"constant"``, constant padding), so the
two agree to float rounding; this version reuses the weight map across calls, batches the
window gather, accumulates in place on one device with a fused multiply-add, and runs
under ``torch.inference_mode`` with optional autocast. Torch only: the server imports it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from medssl.inference.cancel import check_cancelled
from medssl.progress import Progress

Predictor = Callable[[Tensor], "Tensor | Sequence[Tensor]"]
Blend = Literal["gaussian", "constant"]  # how overlapping windows are weighted
BLENDS = get_args(Blend)
# Floor of the weights relative to 1: corners of a gaussian window are ~1e-21, and a voxel
# seen only by window corners would otherwise be a 0/0 (MONAI clamps at the same value).
MIN_WEIGHT = 1e-3


def _per_axis(value: float | Sequence, ndim: int, name: str) -> tuple:
    if isinstance(value, (int, float)):
        return (value,) * ndim
    values = tuple(value)
    if len(values) != ndim:
        raise ValueError(f"{name}: need one value per spatial axis ({ndim}), got {values}")
    return values


@functools.lru_cache(maxsize=16)
def _importance_map(
    roi_size: tuple[int, ...], blend: Blend, sigma_scale: tuple[float, ...], device: str,
    dtype: torch.dtype,
) -> Tensor:
    with torch.inference_mode(False):  # a normal tensor, usable inside or outside inference
        if blend == "constant":
            return torch.ones(roi_size, device=device, dtype=dtype)
        weights = torch.ones((), device=device, dtype=torch.float32)
        for n, scale in zip(roi_size, sigma_scale):
            x = torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2.0
            g = torch.exp(-(x**2) / (2.0 * (scale * n) ** 2))
            weights = weights.unsqueeze(-1) * g
        floor = max(float(weights.min()), MIN_WEIGHT)
        return weights.clamp_(min=floor).to(dtype)


def importance_map(
    roi_size: Sequence[int],
    blend: Blend = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Weights ``[*roi_size]`` of one window, cached per arguments; do not modify the result.

    ``"gaussian"``: product over axes of ``exp(-x^2 / (2 (sigma_scale * n)^2))`` with ``x`` the
    distance to the window centre in voxels, floored at ``max(min, 1e-3)``. ``"constant"``: ones.
    """
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    roi = tuple(int(r) for r in roi_size)
    sigmas = tuple(float(s) for s in _per_axis(sigma_scale, len(roi), "sigma_scale"))
    if any(s <= 0 for s in sigmas):
        raise ValueError(f"sigma_scale must be > 0, got {sigmas}")
    return _importance_map(roi, blend, sigmas, str(torch.device(device)), dtype)


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices along one axis of ``size >= roi``: step ``int(roi * (1 - overlap))``
    (at least 1), the last window moved back to end at the edge."""
    if size == roi:
        return [0]
    step = max(int(roi * (1 - overlap)), 1)
    count = math.ceil((size - roi) / step) + 1
    return [min(i * step, size - roi) for i in range(count)]


def _check_arguments(
    image: Tensor, roi_size: int | Sequence[int], overlap: float | Sequence[float],
    batch_size: int, blend: Blend, out_dtype: torch.dtype,
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    if not isinstance(image, Tensor) or image.ndim not in (4, 5):
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a tensor [B, C, H, W] or [B, C, D, H, W], got {shape}")
    ndim = image.ndim - 2
    roi = _per_axis(roi_size, ndim, "roi_size")
    try:
        roi = tuple(operator.index(r) for r in roi)  # ints, numpy ints; not 9.5
    except TypeError:
        raise ValueError(f"roi_size must be integers > 0, got {roi}") from None
    if not all(r > 0 for r in roi):
        raise ValueError(f"roi_size must be integers > 0, got {roi}")
    overlaps = tuple(float(o) for o in _per_axis(overlap, ndim, "overlap"))
    if not all(0.0 <= o < 1.0 for o in overlaps):
        raise ValueError(f"overlap must be in [0, 1), got {overlaps}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if not out_dtype.is_floating_point:
        raise ValueError(f"out_dtype must be a floating dtype, got {out_dtype}")
    return roi, overlaps


def _first_output(output: Tensor | Sequence[Tensor], expected: tuple[int, ...]) -> Tensor:
    """The full-resolution output ``[n, K, *roi]`` (the first one of a deep-supervision list)."""
    if isinstance(output, (list, tuple)):
        if not output:
            raise ValueError("predictor returned an empty sequence")
        output = output[0]
    if not isinstance(output, Tensor):
        raise TypeError(f"predictor must return a tensor or a list of them, got {type(output)}")
    n, *roi = expected
    if output.ndim != len(expected) + 1 or output.shape[0] != n or list(output.shape[2:]) != roi:
        raise ValueError(
            f"predictor output must be [{n}, K, {', '.join(map(str, roi))}] for a window batch of "
            f"{n}, got {tuple(output.shape)}"
        )
    return output


def sliding_window(
    predictor: Predictor,
    image: Tensor,
    roi_size: int | Sequence[int],
    overlap: float | Sequence[float] = 0.5,
    batch_size: int = 4,
    blend: Blend = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    out_dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    window_device: torch.device | str | None = None,
    autocast: torch.dtype | None = None,
    progress: bool = False,
) -> Tensor:
    """Predict ``image [B, C, *spatial]`` window by window; returns ``[B, K, *spatial]`` on ``device``.

    Args:
        predictor: maps windows ``[n, C, *roi_size]`` to ``[n, K, *roi_size]`` (or a list or
            tuple of outputs whose first is that, as with deep supervision).
        image: 2D ``[B, C, H, W]`` or 3D ``[B, C, D, H, W]``; axes smaller than ``roi_size``
            are zero-padded symmetrically and the output cropped back.
        roi_size: window size, one int for all axes or one per spatial axis.
        overlap: fraction of a window shared with its neighbour, in ``[0, 1)``.
        batch_size: windows per predictor call.
        blend: ``"gaussian"`` (centre-weighted) or ``"constant"`` (plain mean).
        sigma_scale: gaussian sigma as a fraction of the window size.
        out_dtype: dtype of the accumulator and the result.
        device: where the output is accumulated and returned (default: the image's device).
        window_device: where windows are cut and the predictor runs (default: ``device``);
            the image is moved there once.
        autocast: run the predictor under ``torch.autocast`` with this dtype (e.g. bf16 on GPU).
        progress: show a progress bar over windows.
    """
    roi, overlaps = _check_arguments(image, roi_size, overlap, batch_size, blend, out_dtype)
    device = torch.device(device) if device is not None else image.device
    window_device = torch.device(window_device) if window_device is not None else device
    batch, _, *size = image.shape

    with torch.inference_mode():
        image = image.to(window_device)
        pad = [(max(r - s, 0) // 2, max(r - s, 0) - max(r - s, 0) // 2) for s, r in zip(size, roi)]
        if any(p for pair in pad for p in pair):
            image = F.pad(image, [p for pair in reversed(pad) for p in pair])
        padded = tuple(image.shape[2:])
        starts = [window_starts(s, r, o) for s, r, o in zip(padded, roi, overlaps)]
        windows = [
            tuple(slice(s, s + r) for s, r in zip(corner, roi))
            for corner in _grid(starts)
        ]
        weight = importance_map(roi, blend, sigma_scale, device, out_dtype)
        count = _coverage(weight, starts, padded)

        jobs = [(b, window) for b in range(batch) for window in windows]
        buffer = image.new_empty((min(batch_size, len(jobs)), image.shape[1], *roi))
        out: Tensor | None = None
        amp = (
            torch.autocast(window_device.type, dtype=autocast)
            if autocast is not None
            else contextlib.nullcontext()
        )
        with Progress(enabled=progress) as bar:
            task = bar.task("windows", total=len(jobs))
            for first in range(0, len(jobs), batch_size):
                check_cancelled()  # a request given up stops here (medssl.inference.cancel)
                chunk = jobs[first : first + batch_size]
                # One window buffer, refilled: fresh allocations would page-fault on every call.
                x = buffer[: len(chunk)]
                for i, (b, window) in enumerate(chunk):
                    x[i].copy_(image[(b, slice(None), *window)])
                with amp:
                    y = _first_output(predictor(x), (len(chunk), *roi))
                y = y.to(device=device, dtype=out_dtype)
                if out is None:
                    with torch.inference_mode(False):  # callers may modify the result in place
                        out = torch.zeros((batch, y.shape[1], *padded), dtype=out_dtype,
                                          device=device)
                for (b, window), y_window in zip(chunk, y):
                    out[(b, slice(None), *window)].addcmul_(y_window, weight)
                bar.advance(task, len(chunk))
        out.div_(count)
    if not any(p for pair in pad for p in pair):
        return out
    crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(pad, size))
    return out[(slice(None), slice(None), *crop)].contiguous()


def _coverage(weight: Tensor, starts: list[list[int]], size: Sequence[int]) -> Tensor:
    """Sum of ``weight`` placed at every window of the grid: ``[*size]``.

    The windows form a Cartesian grid, so the sum is taken one axis at a time (last first):
    ``n_last * roi^3 + n_mid * roi^2 * size_last + n_first * roi * size_mid * size_last``
    additions instead of ``n_first * n_mid * n_last * roi^3``.
    """
    total = weight
    for axis in reversed(range(weight.ndim)):
        shape = list(total.shape)
        shape[axis] = size[axis]
        spread = total.new_zeros(shape)
        for start in starts[axis]:
            spread.narrow(axis, start, weight.shape[axis]).add_(total)
        total = spread
    return total


def _grid(starts: list[list[int]]) -> list[tuple[int, ...]]:
    """All corners of the window grid, last axis fastest."""
    corners: list[tuple[int, ...]] = [()]
    for axis_starts in starts:
        corners = [c + (s,) for c in corners for s in axis_starts]
    return corners


def sliding_window_by_slice(
    predictor: Callable[[Tensor], Tensor | Sequence[Tensor]],
    image: Tensor,
    roi_size: int | Sequence[int],
    *args,
    slices_per_call: int = 16,
    **kwargs,
) -> Tensor:
    """A 2D predictor over a volume ``[B, C, X, Y, Z]``, axial slice by axial slice.

    Each slice along the last axis (the axis the data modules cut 2D training slices from)
    goes through :func:`sliding_window` with a 2D ``roi_size``; ``slices_per_call`` slices
    share one call. Returns ``[B, K, X, Y, Z]``; other arguments as :func:`sliding_window`.
    """
    if image.ndim != 5:
        raise ValueError(f"slice-by-slice prediction needs a volume [B, C, X, Y, Z], got {tuple(image.shape)}")
    if slices_per_call < 1:
        raise ValueError(f"slices_per_call must be >= 1, got {slices_per_call}")
    batch, channels, *_, depth = image.shape
    slices = image.permute(0, 4, 1, 2, 3).reshape(batch * depth, channels, *image.shape[2:4])
    out = torch.cat([
        sliding_window(predictor, chunk, roi_size, *args, **kwargs)
        for chunk in slices.split(slices_per_call)
    ])  # [B*Z, K, X, Y]
    return out.reshape(batch, depth, *out.shape[1:]).permute(0, 2, 3, 4, 1).contiguous()
