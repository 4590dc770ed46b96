"""Stacks of 2D slices of cached volumes, read by memory map: the 3D half of joint 2D/3D batches.

An item is one volume's stack: ``num_slices`` slices across ``slice_axis`` (evenly spaced
over the whole depth with a random offset, or ``consecutive`` from a random start), each cut
to the same in-plane box of ``crop_size`` (padded with the volume's ``pad_value`` where the
box leaves it), with their normalised positions along the axis:
``{"slices": [S, 1, h, w], "positions": [S] in [0, 1], "volume": int, "key": int}``. ``key``
seeds what the method draws per sample. Reads only the chosen slices' boxes from
:class:`~medssl.preprocess.volume_cache.CacheIndex` memory maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch
from torch.utils.data import Dataset

from medssl.preprocess.volume_cache import CacheIndex
from medssl.transforms.rng import keyed_generator
from medssl.transforms.spatial import crop_box
from medssl.transforms.views import sample_crop_starts
from medssl.types import BatchKey

SliceSampling = Literal["even", "consecutive"]  # spread over the depth, or a run from a random start
SAMPLING = get_args(SliceSampling)


def slice_indices(
    depth: int, count: int, sampling: SliceSampling, generator: torch.Generator
) -> torch.Tensor:
    """``[count]`` slice indices in ``0..depth-1`` (repeats when the volume is thinner than ``count``)."""
    if depth < 1 or count < 1:
        raise ValueError(f"{count} slices of a volume {depth} slices deep")
    if sampling == "consecutive":
        start = int(torch.randint(0, max(1, depth - count + 1), (1,), generator=generator))
        return (torch.arange(count) + start).clamp(max=depth - 1)
    if sampling != "even":
        raise ValueError(f"slice sampling {sampling!r}: expected one of {SAMPLING}")
    gap = depth / count
    offset = float(torch.rand(1, generator=generator)) * gap
    return (torch.arange(count) * gap + offset).floor().long().clamp(max=depth - 1)


class SliceStackDataset(Dataset):
    """One slice stack per item (module doc).

    Args:
        index: the 3D cache. volumes: indices into ``index.volumes``.
        crop_size: in-plane ``(h, w)``. num_slices: S >= 2. slice_axis: 0, 1 or 2.
        sampling: ``"even"`` or ``"consecutive"``. length: items per epoch (default: one per
        volume). fixed: every epoch the same stacks (validation). seed: of the draws.
    """

    def __init__(
        self,
        index: CacheIndex,
        volumes: Sequence[int],
        crop_size: Sequence[int],
        num_slices: int = 8,
        slice_axis: int = 2,
        sampling: SliceSampling = "even",
        length: int | None = None,
        fixed: bool = False,
        seed: int = 0,
    ) -> None:
        if not volumes:
            raise ValueError("a slice stack dataset needs at least one volume")
        if len(crop_size) != 2 or min(crop_size) < 1:
            raise ValueError(f"crop_size {tuple(crop_size)}: expected 2 positive in-plane sides")
        if num_slices < 2 or slice_axis not in (0, 1, 2) or sampling not in SAMPLING:
            raise ValueError(
                f"num_slices >= 2, slice_axis 0-2, sampling in {SAMPLING}; got {num_slices}, {slice_axis}, {sampling!r}"
            )
        self.index, self.volumes = index, list(volumes)
        self.crop_size, self.num_slices, self.slice_axis = (
            tuple(int(s) for s in crop_size),
            num_slices,
            slice_axis,
        )
        self.sampling, self.fixed, self.seed = sampling, fixed, seed
        self.length = len(self.volumes) if length is None else int(length)
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def _open(self, i: int) -> np.ndarray:
        if i not in self._maps:
            self._maps[i] = self.index.open(self.index.volumes[i])
        return self._maps[i]

    def __getitem__(self, item: int) -> dict:
        key = item % self.length if self.fixed else item
        i = self.volumes[(item % self.length) % len(self.volumes)]
        volume = self.index.volumes[i]
        array = self._open(i)[None]  # [1, X, Y, Z], unread
        g = keyed_generator(self.seed, key)
        depth = array.shape[1 + self.slice_axis]
        plane = [s for a, s in enumerate(array.shape[1:]) if a != self.slice_axis]
        start = sample_crop_starts(plane, self.crop_size, 1, g)[0].tolist()
        index = slice_indices(depth, self.num_slices, self.sampling, g)
        size = list(self.crop_size)
        size.insert(self.slice_axis, 1)
        crops = []
        for z in index.tolist():
            box_start = list(start)
            box_start.insert(self.slice_axis, z)
            crops.append(
                crop_box(array, box_start, size, volume.pad_value).squeeze(1 + self.slice_axis)
            )
        return {
            BatchKey.SLICES: torch.stack(crops),  # [S, 1, h, w]
            BatchKey.POSITIONS: index.float() / max(depth - 1, 1),
            BatchKey.VOLUME: i,
            BatchKey.KEY: int(torch.randint(0, 2**40, (1,), generator=g)),
        }
