"""Which cases and classes a fine-tuning run uses: structure selection, targets, the labelled fraction.

Pure functions of the label cache's entries (:class:`~medssl.preprocess.label_cache.CachedLabels`),
so the data module only wires them together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from medssl.preprocess.geometry import empty_boxes
from medssl.preprocess.label_cache import CachedLabels
from medssl.types import TaskKind

LUT_SIZE = 2**16  # label maps are uint8 or uint16


def select_structures(known: dict[int, str], names: Sequence[str] | None, task: TaskKind) -> list[int]:
    """Label values of the structures ``names`` (sorted by value).

    Default: every structure (segmentation), those whose name contains ``"lesion"`` (detection).
    """
    by_name = {name: value for value, name in known.items()}
    if names is None:
        chosen = [v for v, n in known.items() if task != TaskKind.DETECTION or "lesion" in n.lower()]
        if not chosen:
            raise ValueError(f"no structure to {task} by default (detection takes names containing 'lesion'); pass structures from {sorted(by_name)}")
        return sorted(chosen)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"structures {unknown} are not in the store's labels; known structures: {sorted(by_name)}")
    if len(set(names)) != len(names):
        raise ValueError(f"structures {list(names)}: each name once")
    return sorted(by_name[n] for n in names)


def class_lut(values: Sequence[int]) -> np.ndarray:
    """``[65536]`` int64: stored value → training class (``values[k]`` → k + 1, everything else → 0)."""
    lut = np.zeros(LUT_SIZE, dtype=np.int64)
    for k, value in enumerate(values):
        lut[value] = k + 1
    return lut


def case_boxes(entry: CachedLabels, values: Sequence[int], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``[N, 6]`` (cached voxels) and classes ``[N]`` of one case.

    From the label map's connected components of ``values`` when the case has a map (class =
    position in ``values``), else from the store's world boxes whose label is in ``names``
    (class = position in ``names``): the map is the finer source, never both.
    """
    if entry.file is not None:
        position = {v: k for k, v in enumerate(values)}
        found = [(position[v], box) for v, box in entry.components if v in position]
    else:
        position = {n: k for k, n in enumerate(names)}
        found = [(position[label], box) for label, box in entry.boxes if label in position]
    if not found:
        return empty_boxes(3), np.zeros(0, dtype=np.int64)
    return np.asarray([b for _, b in found], dtype=np.float32), np.asarray([c for c, _ in found], dtype=np.int64)


def classification_targets(entries: dict[str, CachedLabels], vocabulary: Sequence[str]) -> tuple[dict[str, int | np.ndarray], bool]:
    """Each case's target and whether the task is multi-label.

    Multi-label (multi-hot ``[C]`` float32) when any case has a number of classes other than
    one (several findings, or none); else multi-class (the class index).
    """
    if not vocabulary:
        raise ValueError("the store's labels name no diagnosis class: classification needs classes")
    index = {name: k for k, name in enumerate(vocabulary)}
    for vid, entry in entries.items():
        unknown = [c for c in entry.classes if c not in index]
        if unknown:
            raise ValueError(f"volume {vid}: classes {unknown} are not in the store's class vocabulary {list(vocabulary)}")
    multi_label = any(len(e.classes) != 1 for e in entries.values())
    targets: dict[str, int | np.ndarray] = {}
    for vid, entry in entries.items():
        if multi_label:
            hot = np.zeros(len(vocabulary), dtype=np.float32)
            hot[[index[c] for c in entry.classes]] = 1.0
            targets[vid] = hot
        else:
            targets[vid] = index[entry.classes[0]]
    return targets, multi_label


def labelled_subset(volume_ids: Sequence[str], fraction: float, seed: int = 0) -> list[int]:
    """Positions of a ``fraction`` of ``volume_ids`` (at least one), nested across fractions.

    ``volume_ids``: any stable identity; the fine-tuning data module passes
    :func:`~medssl.data.split.content_id`, so the subset does not move with the project key.
    Cases are ranked once by a hash of (seed, id) and the first
    ``max(1, round(fraction * n))`` taken, so for one seed the 5% subset lies inside the 10%
    one, and a case keeps its rank as the store grows.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction {fraction}: expected a value in (0, 1]")
    if not volume_ids:
        return []
    score = [hashlib.sha256(f"{seed}:{vid}".encode()).hexdigest() for vid in volume_ids]
    ranked = sorted(range(len(volume_ids)), key=score.__getitem__)
    keep = max(1, round(fraction * len(volume_ids)))
    return sorted(ranked[:keep])
