"""Settings that fit a budget: activation checkpointing, then the crop, then the batch.

As nnU-Net fits its patch to a GPU, the crop shrinks along its largest axis first, one
multiple of ``multiple`` at a time (the backbone's total stride, or what a method needs on
an axis, e.g. VoCo's grid x stride), so every feature map stays whole. The order of the
steps trades what a run learns least for memory first:

1. activation checkpointing (same result, about a third more compute), where the backbone
   has it;
2. the crop, down to half of each side;
3. the batch size, down to 1;
4. the crop again, down to one multiple per side.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class RunSettings:
    """What fitting may change: items per batch, the crop, activation checkpointing."""

    batch_size: int
    crop_size: tuple[int, ...]
    checkpointing: bool = False

    @property
    def load(self) -> int:
        """Batch x crop voxels: what activations grow with."""
        return self.batch_size * math.prod(self.crop_size)

    def changes(self, start: RunSettings) -> list[str]:
        """The command-line flags that turn ``start`` into these settings."""
        flags = []
        if self.checkpointing != start.checkpointing:
            flags.append(f"--model.init_args.backbone_kwargs.use_checkpoint {str(self.checkpointing).lower()}")
        if self.crop_size != start.crop_size:
            flags.append(f"--data.crop_size [{','.join(str(s) for s in self.crop_size)}]")
        if self.batch_size != start.batch_size:
            flags.append(f"--data.batch_size {self.batch_size}")
        return flags


def _round_down(value: float, multiple: int) -> int:
    return max(multiple, int(value // multiple) * multiple)


def _shrink_crop(current: RunSettings, multiple: Sequence[int], floor: Sequence[int]) -> Iterator[RunSettings]:
    """The largest axis to its next smaller multiple, repeatedly, while it stays >= ``floor``."""
    while True:
        crop = list(current.crop_size)
        smaller = [((s - 1) // m) * m for s, m in zip(crop, multiple)]
        axes = [a for a in range(len(crop)) if smaller[a] >= floor[a]]
        if not axes:
            return
        axis = max(axes, key=lambda a: (crop[a], -a))
        crop[axis] = smaller[axis]
        current = replace(current, crop_size=tuple(crop))
        yield current


def shrink_steps(start: RunSettings, multiple: Sequence[int], can_checkpoint: bool) -> Iterator[RunSettings]:
    """Ever smaller settings from ``start``, in the order of the module doc (``start`` itself
    not included); each crop side shrinks to multiples of ``multiple`` (one per axis)."""
    if len(multiple) != len(start.crop_size) or min(multiple) < 1:
        raise ValueError(f"multiple {tuple(multiple)}: one positive value per crop axis {start.crop_size}")
    current = start
    if can_checkpoint and not current.checkpointing:
        current = replace(current, checkpointing=True)
        yield current
    half = [_round_down(s / 2, m) for s, m in zip(start.crop_size, multiple)]
    for smaller in _shrink_crop(current, multiple, half):
        current = smaller
        yield current
    while current.batch_size > 1:
        current = replace(current, batch_size=current.batch_size - 1)
        yield current
    yield from _shrink_crop(current, multiple, multiple)


def first_fit(start: RunSettings, multiple: Sequence[int], can_checkpoint: bool, fits) -> RunSettings | None:
    """The first of :func:`shrink_steps` for which ``fits(settings)`` holds, else None."""
    for settings in shrink_steps(start, multiple, can_checkpoint):
        if fits(settings):
            return settings
    return None
