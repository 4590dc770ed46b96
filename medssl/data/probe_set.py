"""A labelled held-out set of crops for online evaluation: which structure a crop centres on.

Built from preprocessed volumes (as the pretraining cache holds them: the plan's spacing and
intensity normalisation) and label maps on the same voxel grid: for each structure, crops of
``crop_size`` centred on random voxels of that structure. Saved as one safetensors file
(``images [M, 1, *crop]`` float32, ``labels [M]`` and ``groups [M]`` int64 - the group is the
source volume, so kNN and linear probes train and test on different volumes) with the class
names in its metadata. Loading never unpickles.

:func:`build_probe_set` makes one from a store's own labels (``medssl probe-set``): the cached
volumes (:mod:`medssl.preprocess.volume_cache`) and their label maps on the same grid
(:mod:`medssl.preprocess.label_cache`). It probes the labelled volumes that pretraining holds out:
the validation side of :func:`~medssl.data.split.split_by_patient` with the data module's
``val_fraction`` and ``seed``, so no probe crop comes from a patient the encoder trained on.
When fewer than two labelled volumes lie there it uses every labelled volume, with a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save

from medssl.atomic import atomic_write_bytes
from medssl.data.split import split_by_patient
from medssl.errors import ConfigError
from medssl.preprocess.label_cache import ensure_label_cache
from medssl.preprocess.volume_cache import ensure_cache
from medssl.progress import Progress
from medssl.store.labels import read_labels, read_split
from medssl.store.plan import load_or_make_plan

log = logging.getLogger("medssl.probe")


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
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "images": self.images.float().contiguous(),
            "labels": self.labels.long(),
            "groups": self.groups.long(),
        }
        atomic_write_bytes(
            path, save(tensors, metadata={"class_names": json.dumps(list(self.class_names))})
        )
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


def build_probe_set(
    store: str | Path,
    structures: Sequence[str] | None = None,
    crop_size: Sequence[int] | None = None,
    per_class: int = 20,
    min_voxels: int = 50,
    val_fraction: float = 0.1,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> ProbeSet:
    """A probe set from the label maps of ``store`` (module doc: which volumes it uses).

    ``structures``: names to probe (default: every structure of the label maps, those with
    fewer than ``min_voxels`` voxels in every probed volume dropped with a warning; named
    ones must reach it in at least one). ``crop_size`` defaults to the plan's. ``val_fraction``
    and ``seed`` must be the pretraining data module's for the probe volumes to be held out.
    Builds ``plan.json`` and the caches when missing.

    Raises:
        ConfigError: no label map in the store, an unknown structure, or too few voxels.
    """
    if per_class < 1 or min_voxels < 1:
        raise ConfigError(f"per_class {per_class}, min_voxels {min_voxels}: expected >= 1")
    if not any(r.mask_path for r in read_labels(store).values()):
        raise ConfigError(
            f"store {store}: no label maps (ingest a label table: medssl ingest --labels)"
        )
    plan = load_or_make_plan(store)
    index = ensure_cache(store, plan, workers, progress)
    labels = ensure_label_cache(store, plan, index, workers, progress)
    volumes = [v for v in index.volumes if getattr(labels.entries.get(v.volume_id), "file", None)]
    if not volumes:
        raise ConfigError(
            f"store {store}: no labelled volume is in the pretraining cache (plan: 3D volumes of >= {plan.min_slices} slices)"
        )
    _, held_out = split_by_patient(volumes, val_fraction, seed, read_split(store))
    if len(held_out) >= 2:
        volumes = [volumes[i] for i in held_out]
    else:
        log.warning(
            "probe set: %d labelled volume(s) held out from pretraining (val_fraction %s, seed %d); using all %d labelled volumes",
            len(held_out),
            val_fraction,
            seed,
            len(volumes),
        )
    entries = [labels.entries[v.volume_id] for v in volumes]
    names = {value: name for e in entries for value, name in e.structures.items()}
    if structures:
        by_name = {name: value for value, name in names.items()}
        unknown = [s for s in structures if s not in by_name]
        if unknown:
            raise ConfigError(
                f"structures {unknown}: not in the store's labels; known: {sorted(by_name)}"
            )
        names = {by_name[s]: s for s in structures}
    maps = []
    reached: dict[int, int] = dict.fromkeys(names, 0)  # volumes where a structure has min_voxels
    with Progress(progress) as bar:
        task = bar.task("probe set", total=len(entries))
        for entry in entries:
            maps.append(labels.open(entry))
            counts = np.bincount(np.asarray(maps[-1]).ravel())
            for value in names:
                reached[value] += int(value < len(counts) and counts[value] >= min_voxels)
            bar.advance(task)
    missing = sorted(names[v] for v, n in reached.items() if n == 0)
    if missing and structures:
        raise ConfigError(
            f"structures {missing}: fewer than {min_voxels} voxels in every probe volume; lower --min-voxels or leave them out"
        )
    if missing:
        log.warning(
            "probe set: %s dropped (fewer than %d voxels in every probe volume)",
            missing,
            min_voxels,
        )
    names = {v: n for v, n in names.items() if reached[v]}
    if not names:
        raise ConfigError(f"store {store}: no structure has {min_voxels} voxels in a probe volume")
    return make_probe_set(
        [index.open(v) for v in volumes],
        maps,
        tuple(crop_size or plan.crop_size),
        names,
        per_class=per_class,
        min_voxels=min_voxels,
        pad_value=[v.pad_value for v in volumes],
        seed=seed,
    )
