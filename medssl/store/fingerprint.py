"""What a store holds, summarised once for planning (:func:`fingerprint`).

Per modality: how many 3D volumes, their spacings and shapes (every volume, from the
manifest) and foreground intensity percentiles from a bounded sample of voxels, as plain
JSON-able numbers that :func:`medssl.store.plan.make_plan` turns into decisions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medssl.io.nifti import read_nifti
from medssl.store.manifest import Manifest
from medssl.store.selection import MIN_SLICES, foreground_mask, is_volume_3d, modality_key
from medssl.store.volume_row import VolumeRow

FINGERPRINT_VERSION = 1


def fingerprint(
    store: str | Path,
    *,
    max_volumes_per_modality: int = 24,
    voxels_per_volume: int = 100_000,
    seed: int = 0,
    min_slices: int = MIN_SLICES,
) -> dict:
    """What the store holds, as plain JSON-able numbers.

    Spacings and shapes come from the manifest (every volume); intensities from at most
    ``max_volumes_per_modality`` volumes per modality, at most ``voxels_per_volume``
    foreground voxels each, so memory stays bounded however large the store.
    """
    store = Path(store)
    with Manifest(store / "manifest.sqlite") as manifest:
        rows = manifest.volumes()
    # in content order (the stored file's sha256), not pseudonym order: the sample, and so the
    # plan's intensity statistics, do not move with the project key
    chosen = sorted((r for r in rows if is_volume_3d(r, min_slices)), key=lambda r: (r.sha256, r.volume_id))
    by_modality: dict[str, list[VolumeRow]] = {}
    for row in chosen:
        by_modality.setdefault(modality_key(row.modality), []).append(row)
    rng = np.random.default_rng(seed)
    modalities = {}
    for modality, group in sorted(by_modality.items()):
        stats = _geometry_stats(group)
        picked = rng.choice(len(group), size=min(len(group), max_volumes_per_modality), replace=False)
        stats["intensity"] = _intensity_stats(store, [group[i] for i in sorted(picked)], modality, voxels_per_volume, rng)
        modalities[modality] = stats
    return {
        "version": FINGERPRINT_VERSION,
        "volumes": len(rows),
        "selected": len(chosen),
        "min_slices": min_slices,
        "all": _geometry_stats(chosen) if chosen else None,
        "modalities": modalities,
    }


def _geometry_stats(rows: list[VolumeRow]) -> dict:
    spacing = np.array([r.spacing[:3] for r in rows], dtype=np.float64)
    shape = np.array([r.shape[:3] for r in rows], dtype=np.float64)
    extent = spacing * shape

    def r(a) -> list[float]:
        return [round(float(v), 6) for v in a]

    return {
        "count": len(rows),
        "spacing_median": r(np.median(spacing, axis=0)),
        "spacing_p10": r(np.percentile(spacing, 10, axis=0)),
        "spacing_p90": r(np.percentile(spacing, 90, axis=0)),
        "shape_median": r(np.median(shape, axis=0)),
        "shape_min": r(shape.min(axis=0)),
        "shape_max": r(shape.max(axis=0)),
        "extent_median_mm": r(np.median(extent, axis=0)),
    }


def _intensity_stats(store: Path, rows: list[VolumeRow], modality: str, per_volume: int, rng: np.random.Generator) -> dict:
    samples = []
    for row in rows:
        array = read_nifti((store / row.path).read_bytes()).array
        if array.ndim == 4:  # a series: its first frame speaks for it
            array = array[..., 0]
        values = array[foreground_mask(array, modality)].astype(np.float64, copy=False)
        if values.size > per_volume:
            values = rng.choice(values, size=per_volume, replace=False)
        samples.append(values)
        del array
    pooled = np.concatenate(samples) if samples else np.zeros(0)
    if pooled.size == 0:
        return {"sampled_volumes": len(rows), "sampled_voxels": 0}
    p_lo, p_hi = np.percentile(pooled, [0.5, 99.5])
    return {
        "sampled_volumes": len(rows),
        "sampled_voxels": int(pooled.size),
        "p00_5": float(p_lo),
        "p99_5": float(p_hi),
        "mean": float(pooled.mean()),
        "std": float(pooled.std()),
        "min": float(pooled.min()),
        "max": float(pooled.max()),
    }
