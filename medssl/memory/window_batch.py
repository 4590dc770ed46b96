"""The sliding-window batch a device can hold now: ``sw_batch_size``, fewer, or a refusal.

The cost comes from :func:`medssl.memory.sliding.sliding_window_cost`; the budget is the
device's (``MEDSSL_MEMORY_BUDGET_GB`` replaces it) less what is already held: this process's
resident set on the CPU, the allocated memory on a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from medssl.memory import GIB, MemoryBudgetError, device_budget
from medssl.memory.budget import resident_bytes
from medssl.memory.sliding import SlidingWindowCost, fit_window_batch

log = logging.getLogger("medssl.predict")


def window_batch_on(device: torch.device, cost: SlidingWindowCost, wanted: int, shape: Sequence[int]) -> int:
    """Windows per forward pass for a preprocessed volume of ``shape`` on ``device``.

    Raises:
        MemoryBudgetError: not even one window at a time fits (one line).
    """
    budget = device_budget(device)
    held = resident_bytes() if device.type == "cpu" else torch.cuda.memory_allocated(device)
    batch = fit_window_batch(cost, wanted, budget.total - held)
    if batch == 0:
        size = "x".join(str(s) for s in shape)
        raise MemoryBudgetError(
            f"memory: predicting a {size} volume needs ~{(held + cost.total(1)) / GIB:.1f} GiB on {device} "
            f"even one window at a time, more than the {budget}; free memory or use a larger machine"
        )
    if batch < wanted:
        log.warning("memory: %d windows per pass instead of --sw-batch-size %d: %d would need ~%.1f GiB on %s of %s",
                    batch, wanted, wanted, (held + cost.total(wanted)) / GIB, device, budget)
    return batch
