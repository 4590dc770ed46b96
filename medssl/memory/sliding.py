"""Peak memory of sliding-window prediction, and the window batch that fits a budget.

:func:`medssl.inference.sliding_window.sliding_window` on a volume ``[1, 1, *V]`` with ``K``
outputs holds at once: the (padded) image on the window device, the fp32 accumulator
``[1, K, *V]``, the coverage map ``[*V]``, the window buffer ``[n, 1, *roi]``, the network's
forward peak for ``n`` windows without gradient (traced once for one window on fake tensors
and scaled by ``n``: :func:`medssl.memory.trace.trace_forward`) and its output cast to fp32
``[n, K, *roi]``; afterwards the argmax ``[1, 1, *V]`` (int64) while the accumulator is still
alive. A 2D encoder predicts a volume slice by slice in groups of ``slices_per_call``: the
per-call terms cover that group, and the outputs of every group are concatenated and
permuted once more at the end (two more accumulators of the whole volume).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

FP32, INT64 = 4, 8


@dataclass(frozen=True)
class SlidingWindowCost:
    """The parts of a prediction's peak that do not depend on the window batch (``fixed``)
    and what each window in a batch adds (``per_window``), in bytes."""

    fixed: int
    per_window: int

    def total(self, window_batch: int) -> int:
        return self.fixed + window_batch * self.per_window


def sliding_window_cost(volume: Sequence[int], roi: Sequence[int], num_classes: int, forward_per_window: int, slices_per_call: int = 16) -> SlidingWindowCost:
    """The cost of predicting ``volume`` (spatial shape, after preprocessing) with windows
    ``roi`` (3 sides; 2 for a 2D encoder run slice by slice) and ``num_classes`` outputs;
    ``forward_per_window``: the traced forward peak of one window."""
    k = int(num_classes)
    window = math.prod(int(r) for r in roi)
    per_window = forward_per_window + window * FP32 * (1 + k)  # buffer + fp32 logits
    if len(roi) == len(volume):
        padded = math.prod(max(int(v), int(r)) for v, r in zip(volume, roi))
        fixed = padded * FP32 * (2 + k) + max(0, padded * INT64 - window * FP32 * k)
        return SlidingWindowCost(fixed, per_window)
    *plane, depth = (int(v) for v in volume)
    group = min(int(slices_per_call), depth)
    padded = group * math.prod(max(p, int(r)) for p, r in zip(plane, roi))
    whole = math.prod(plane) * depth
    fixed = padded * FP32 * (2 + k) + whole * FP32 * k * 2 + whole * INT64
    return SlidingWindowCost(fixed, per_window)


def fit_window_batch(cost: SlidingWindowCost, wanted: int, available: int) -> int:
    """The largest window batch ``<= wanted`` whose cost fits ``available`` bytes; 0 if none."""
    if cost.fixed + cost.per_window > available:
        return 0
    return max(1, min(int(wanted), (available - cost.fixed) // max(cost.per_window, 1)))
