"""The non-finite guard: stop a run at the first NaN/Inf loss term or gradient.

Both checks run before the optimiser step of the step they inspect, and every rank takes the
same decision (the flag is all-reduced), so the run stops everywhere at once and no
checkpoint it writes ever holds non-finite weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medssl.errors import MedsslError
from medssl.losses import all_reduce_max


class NonFiniteLossError(MedsslError):
    """A loss term or gradient became NaN/Inf; raised before the optimiser step of that step."""


def _any_rank_bad(values: Tensor) -> bool:
    return bool(all_reduce_max((~torch.isfinite(values)).any().float()).item())


def check_loss_terms(terms: dict[str, Tensor], step: int) -> None:
    """Raise :class:`NonFiniteLossError` naming ``step`` and every term when any term is NaN/Inf."""
    values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
    if _any_rank_bad(values):
        shown = ", ".join(f"{k}={v:.4g}" for k, v in zip(terms, values.tolist()))
        raise NonFiniteLossError(
            f"step {step}: loss is not finite ({shown}) on at least one rank; stopped before the "
            "optimizer step, so every checkpoint of this run holds finite weights"
        )


def check_gradients(named_grads: list[tuple[str, Tensor]], step: int) -> None:
    """Raise :class:`NonFiniteLossError` naming ``step`` and a few parameters when a gradient is NaN/Inf."""
    if not named_grads:
        return
    norms = torch.stack(torch._foreach_norm([g.float() for _, g in named_grads]))
    if _any_rank_bad(norms):
        finite = torch.isfinite(norms).tolist()
        names = [n for (n, _), ok in zip(named_grads, finite) if not ok][:3]
        raise NonFiniteLossError(
            f"step {step}: non-finite gradient (e.g. {', '.join(names) or 'on another rank'}); "
            "stopped before the optimizer step"
        )
