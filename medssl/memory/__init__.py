"""Memory-aware plans (issue 14): estimate a run's peak before it allocates, compare it with
what the machine has, and fit batch, crop and activation checkpointing to the budget.

- :mod:`~medssl.memory.budget`: host RAM and GPU memory a process may reach (``MEDSSL_MEMORY_BUDGET_GB``);
- :mod:`~medssl.memory.trace`: the peak of a forward/backward on fake tensors (nothing allocated);
- :mod:`~medssl.memory.estimate`: a training run's peak, term by term;
- :mod:`~medssl.memory.fit`: smaller settings in the order they cost least;
- :mod:`~medssl.memory.sliding`: the peak of sliding-window prediction, and the window batch that fits.

Torch and the standard library only: training (``medssl.training.memory_check``) and serving
(``medssl.inference.predict``) both use it.
"""

from medssl.memory.budget import BUDGET_ENV, GIB, Budget, device_budget, host_budget
from medssl.memory.estimate import (
    EncoderPass,
    Loader,
    MemoryBudgetError,
    MemoryEstimate,
    Workload,
    estimate_training,
)
from medssl.memory.fit import RunSettings, first_fit, shrink_steps

__all__ = [
    "BUDGET_ENV",
    "GIB",
    "Budget",
    "EncoderPass",
    "Loader",
    "MemoryBudgetError",
    "MemoryEstimate",
    "RunSettings",
    "Workload",
    "device_budget",
    "estimate_training",
    "first_fit",
    "host_budget",
    "shrink_steps",
]
