"""What every transform shares: batch handling, parameter sampling.

Layout: a sample is ``[C, *spatial]``, a batch ``[B, C, *spatial]``, with ``spatial_dims``
(2 or 3) spatial axes; ``[C, D, H, W]`` and a 2D batch ``[B, C, H, W]`` have the same rank,
so each transform is told ``spatial_dims`` rather than guessing.

A random transform has ``sample(batch_size, generator) -> twin`` (a deterministic
transform holding per-sample parameters) and ``__call__(x, generator)`` which is exactly
``sample(B, generator)(x)`` (torchio's random/deterministic split). Parameters are drawn
on the CPU from a ``torch.Generator`` and moved to the data's device, so the same seed
gives the same parameters on CPU and GPU, one call per batch (noise fields are drawn on
the data's device from a drawn seed).

An image and its label map move together by applying one sampled twin to both
(:func:`medssl.data.finetune_augment.augment_labelled`), not through dict wrappers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol

import torch


class Twin(Protocol):
    """A deterministic, per-sample parameterised transform of a batch ``[B, C, *spatial]``."""

    def __call__(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor: ...


class InPlaceTwin(ABC):
    """A twin that changes only some samples: ``apply_`` writes them into a batch it may own;
    ``__call__`` returns the input itself when nothing changes, else works on a copy. A
    pipeline copies once and runs every step in place (one copy per batch, not per step)."""

    @abstractmethod
    def is_identity(self) -> bool:
        """True when no sample of the batch changes."""

    @abstractmethod
    def apply_(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """Apply to ``x`` in place (``x`` is the caller's own copy) and return it."""

    def __call__(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        self.check(x)
        return x if self.is_identity() else self.apply_(x.clone(), mode)

    def check(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` when the parameters do not fit the batch."""


def rows_where(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``[B]`` bool → the indices of the true entries, on ``device``."""
    return mask.nonzero().squeeze(1).to(device)


class RandomTransform(Protocol):
    spatial_dims: int

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Twin: ...


def check_spatial_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims {spatial_dims}: expected 2 or 3")
    return spatial_dims


def as_batch(x: torch.Tensor, spatial_dims: int) -> tuple[torch.Tensor, bool]:
    """``x`` as ``[B, C, *spatial]``; True when a batch axis was added to ``[C, *spatial]``."""
    if x.ndim == spatial_dims + 2:
        return x, False
    if x.ndim == spatial_dims + 1:
        return x.unsqueeze(0), True
    raise ValueError(f"tensor of shape {tuple(x.shape)}: expected [C, *spatial] or [B, C, *spatial] with {spatial_dims} spatial axes")


def apply_batched(twin: Callable[..., torch.Tensor], x: torch.Tensor, spatial_dims: int, mode: str | None = None) -> torch.Tensor:
    xb, added = as_batch(x, spatial_dims)
    out = twin(xb, mode) if mode is not None else twin(xb)
    return out.squeeze(0) if added else out


def batch_size_of(x: torch.Tensor, spatial_dims: int) -> int:
    return as_batch(x, spatial_dims)[0].shape[0]


def uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    """``[n]`` float64 draws from U(low, high) on the CPU."""
    if low > high:
        raise ValueError(f"range ({low}, {high}): low exceeds high")
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def bernoulli(n: int, prob: float, generator: torch.Generator | None) -> torch.Tensor:
    """``[n]`` bool: which samples a transform applies to."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"probability {prob}: expected a value in [0, 1]")
    return torch.rand(n, generator=generator, dtype=torch.float64) < prob


def per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[B]`` parameters reshaped to broadcast over ``x`` ``[B, C, *spatial]``, on its device and dtype."""
    return values.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))


class RandomBase(ABC):
    """``__call__`` = ``sample`` then apply: the random transform is its twin with drawn parameters."""

    spatial_dims: int = 3

    @abstractmethod
    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Twin:
        """Draw per-sample parameters for ``batch_size`` samples: the deterministic twin."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        twin = self.sample(batch_size_of(x, self.spatial_dims), generator)
        return apply_batched(twin, x, self.spatial_dims)
