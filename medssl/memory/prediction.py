"""Peak host memory of one prediction, from the size its input declares (before reading it).

A prediction holds, at its peak (``medssl.inference.predict``): the inflated file
(``stored_bytes``), the canonical volume and its float32 scaling (``voxels``), the float32
copy preprocessing starts from and the resampled volume with its tensor on the model grid
(``model_voxels``), the sliding window's buffers for one window at a time
(:mod:`medssl.memory.sliding`, the largest head), and per head a label map at the input's
size with the copies the writers make. The server compares this with its memory budget and
refuses a declared-size bomb before a voxel is decompressed (issue 15, item 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from medssl.memory.sliding import FP32, SlidingWindowCost

LABEL_COPIES = 4  # uint8 label map, value map, native reorder, NIfTI bytes before compression


def model_grid(
    shape: Sequence[int], spacing: Sequence[float] | None, target: Sequence[float]
) -> tuple[int, ...]:
    """Voxels per axis after resampling ``shape`` at ``spacing`` mm to ``target`` mm (the
    shape itself when the spacing is unknown)."""
    if spacing is None:
        return tuple(int(s) for s in shape)
    return tuple(
        max(1, math.ceil(int(n) * float(s) / float(t))) for n, s, t in zip(shape, spacing, target)
    )


def prediction_peak(
    *,
    voxels: int,
    itemsize: int,
    stored_bytes: int,
    model_voxels: int,
    windows: Sequence[SlidingWindowCost] = (),
    heads: int = 1,
) -> int:
    """Bytes of host memory one prediction reaches (module docstring)."""
    read = stored_bytes + voxels * (int(itemsize) + FP32)
    preprocess = voxels * FP32 + 2 * model_voxels * FP32
    window = max((cost.total(1) for cost in windows), default=0)
    labels = max(int(heads), 1) * LABEL_COPIES * voxels
    return int(read + preprocess + window + labels)
