"""A labelled held-out set of crops for online evaluation: which structure a crop centres on.

Built from preprocessed volumes (as the pretraining cache holds them: the plan's spacing and
intensity normalisation) and label maps on the same voxel grid: for each structure, crops of
``crop_size`` centred on random voxels of that structure. Saved as one safetensors file
(``images [M, 1, *crop]`` float32, ``labels [M]`` and ``groups [M]`` int64 - the group is the
source volume, so kNN and linear probes train and test on different volumes) with the class
names in its metadata. Loading never unpickles.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save

from medssl.atomic import atomic_write_bytes


@dataclass(frozen=True)
class ProbeSet:
    """``images [M, 1, *crop]``, ``labels [M]`` in ``0..C-1``, ``groups [M]``, ``class_names [C]``."""

    images: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        m = self.images.shape[0]
        if self.images.ndim not in (4, 5) or self.labels.shape != (m,) or self.groups.shape != (m,):
            raise ValueError(
                f"probe set: images [M, 1, *crop], labels [M], groups [M]; got {tuple(self.images.shape)}, {tuple(self.labels.shape)}, {tuple(self.groups.shape)}"
            )
        if m and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)):
            raise ValueError(f"probe labels must lie in 0..{len(self.class_names) - 1}")

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file atomically (:func:`~medssl.atomic.atomic_write_bytes`)."""
        path = Path(path)
        tensors = {
            "images": self.images.float().contiguous(),
            "labels": self.labels.long(),
            "groups": self.groups.long(),
        }
        atomic_write_bytes(path, save(tensors, metadata={"class_names": json.dumps(list(self.class_names))}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ProbeSet:
        with safe_open(str(path), framework="pt") as f:
            names = json.loads((f.metadata() or {}).get("class_names", "[]"))
        t = load_file(str(path))
        return cls(t["images"], t["labels"], t["groups"], tuple(names))


def make_probe_set(
    volumes: Sequence[np.ndarray],
    label_maps: Sequence[np.ndarray],
    crop_size: Sequence[int],
    class_names: Mapping[int, str],
    per_class: int = 20,
    min_voxels: int = 50,
    pad_value: float | Sequence[float] | None = None,
    seed: int = 0,
) -> ProbeSet:
    """Crops centred on structures of ``label_maps`` (same shapes as ``volumes`` ``[X, Y, Z]``).

    ``class_names``: label value -> name of the structures to probe (e.g. the organs of a
    phantom); a structure is kept in a volume when it has ``min_voxels`` voxels there, and
    ``per_class`` centres are drawn per structure and volume. Crops reaching outside a
    volume are padded with ``pad_value`` (default: the volume's minimum).
    """
    if len(volumes) != len(label_maps) or not volumes:
        raise ValueError(
            f"{len(volumes)} volumes and {len(label_maps)} label maps: expected the same non-zero count"
        )
    rng = np.random.default_rng(seed)
    values = sorted(class_names)
    size = np.asarray(crop_size, dtype=int)
    images, labels, groups = [], [], []
    for g, (volume, labelmap) in enumerate(zip(volumes, label_maps)):
        if volume.shape != labelmap.shape or volume.ndim != len(size):
            raise ValueError(
                f"volume {g}: image {volume.shape} and labels {labelmap.shape} must match and have {len(size)} axes"
            )
        pad = (
            float(np.min(volume))
            if pad_value is None
            else float(pad_value if np.isscalar(pad_value) else pad_value[g])
        )
        padded = np.pad(
            np.asarray(volume, dtype=np.float32), [(s, s) for s in size], constant_values=pad
        )
        for c, value in enumerate(values):
            where = np.argwhere(labelmap == value)
            if len(where) < min_voxels:
                continue
            for centre in where[
                rng.choice(len(where), size=per_class, replace=len(where) < per_class)
            ]:
                start = centre - size // 2 + size  # in the padded frame
                crop = padded[tuple(slice(a, a + s) for a, s in zip(start, size))]
                images.append(torch.from_numpy(np.ascontiguousarray(crop))[None])
                labels.append(c)
                groups.append(g)
    if not images:
        raise ValueError(
            f"no structure of {sorted(class_names.values())} has {min_voxels} voxels in any volume"
        )
    return ProbeSet(
        torch.stack(images),
        torch.tensor(labels),
        torch.tensor(groups),
        tuple(class_names[v] for v in values),
    )
