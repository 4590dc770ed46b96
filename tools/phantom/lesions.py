"""Lesions: spheres of a lesion tissue placed wholly inside a host organ.

Each lesion gets its own label value (101, 102, ...) so detection boxes and per-lesion
diagnosis targets can be read straight off the label map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tools.phantom.canvas import FIRST_LESION_LABEL, LABEL_ID, ORGAN_LABELS, TISSUE_ID, Canvas
from tools.phantom.volume import Lesion


@dataclass(frozen=True)
class LesionKind:
    """A lesion type.

    hosts: organ labels it may sit in; radius_mm: (low, high), drawn uniformly;
    tissue: what it is made of (sets its intensity).
    """

    hosts: tuple[str, ...]
    radius_mm: tuple[float, float]
    tissue: str


LESION_KINDS: dict[str, LesionKind] = {
    "solid_nodule": LesionKind(("lung_right", "lung_left"), (4.0, 10.0), "nodule"),
    "hypodense": LesionKind(("liver",), (8.0, 18.0), "hypodense"),
    "calcified": LesionKind(
        ("lung_right", "lung_left", "liver", "spleen"), (2.5, 5.0), "calcification"
    ),
    "ground_glass": LesionKind(("lung_right", "lung_left"), (6.0, 12.0), "ground_glass"),
    "cyst": LesionKind(("kidney_right", "kidney_left"), (6.0, 12.0), "cyst"),
}

_TRIES_PER_RADIUS = 300
_SHRINK_ROUNDS = 4


def _sphere_block(
    center: np.ndarray, radius_mm: float, spacing: np.ndarray, shape: tuple[int, int, int]
) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Voxel block around ``center`` and the sphere mask in it; None if it leaves the volume."""
    half = np.ceil(radius_mm / spacing).astype(int)
    lo, hi = center - half, center + half + 1
    if np.any(lo < 0) or np.any(hi > np.asarray(shape)):
        return None
    offsets = [(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, center, spacing)]
    dist2 = (
        offsets[0][:, None, None] ** 2
        + offsets[1][None, :, None] ** 2
        + offsets[2][None, None, :] ** 2
    )
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), dist2 <= radius_mm**2


def _find_site(
    c: Canvas, rng: np.random.Generator, host_values: list[int], radius_mm: float
) -> tuple[np.ndarray, tuple[slice, ...], np.ndarray] | None:
    """A random centre whose whole sphere lies in one host organ, or None after many tries."""
    candidates = np.flatnonzero(np.isin(c.labels, host_values))
    if candidates.size == 0:
        return None
    for _ in range(_TRIES_PER_RADIUS):
        center = np.array(np.unravel_index(candidates[rng.integers(candidates.size)], c.shape))
        found = _sphere_block(center, radius_mm, c.spacing, c.shape)
        if found is None:
            continue
        block, sphere = found
        if np.all(c.labels[block][sphere] == c.labels[tuple(center)]):
            return center, block, sphere
    return None


def place_lesions(
    c: Canvas, rng: np.random.Generator, n_lesions: int, kinds: Sequence[str] | None = None
) -> list[Lesion]:
    """Paint ``n_lesions`` lesions into ``c``; kinds cycle through ``kinds`` (default all).

    The radius is at least 1.25 voxels along the coarsest axis so each lesion is visible;
    if no site fits, the radius shrinks (x0.75, a few times) before giving up.
    Raises ValueError when a lesion cannot be placed.
    """
    order = list(kinds) if kinds else list(LESION_KINDS)
    min_radius = 1.25 * float(c.spacing.max())
    lesions: list[Lesion] = []
    for n in range(n_lesions):
        kind_name = order[n % len(order)]
        kind = LESION_KINDS[kind_name]
        host_values = [LABEL_ID[h] for h in kind.hosts]
        radius = max(float(rng.uniform(*kind.radius_mm)), min_radius)
        site = None
        for _ in range(_SHRINK_ROUNDS):
            site = _find_site(c, rng, host_values, radius)
            if site is not None:
                break
            radius = max(radius * 0.75, 0.6 * min_radius)
        if site is None:
            raise ValueError(
                f"lesion {n + 1} ({kind_name}): no room in {'/'.join(kind.hosts)} for a "
                f"{radius:.1f} mm sphere at shape {c.shape}; use a larger shape or fewer lesions"
            )
        center, block, sphere = site
        host = ORGAN_LABELS[int(c.labels[tuple(center)])]
        value = FIRST_LESION_LABEL + n
        c.tissue[block][sphere] = TISSUE_ID[kind.tissue]
        c.labels[block][sphere] = value
        where = np.nonzero(sphere)
        lo = [int(w.min()) + b.start for w, b in zip(where, block)]
        hi = [int(w.max()) + 1 + b.start for w, b in zip(where, block)]
        center_world = c.affine[:3, :3] @ center + c.affine[:3, 3]
        lesions.append(
            Lesion(
                label=value,
                kind=kind_name,
                host=host,
                center_voxel=tuple(float(v) for v in center),
                center_world=tuple(float(v) for v in center_world),
                radius_mm=round(radius, 3),
                bbox=(lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]),
            )
        )
    return lesions
