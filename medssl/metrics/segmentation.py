"""Per-class segmentation metrics on integer label maps: Dice, HD95 and normalised surface Dice.

Thin wrappers over MONAI's metric functions (``compute_dice``, ``compute_hausdorff_distance``,
``compute_surface_dice``): this module only turns a label map into per-class binary masks of
shape ``[1, 1, *spatial]``, passes the voxel spacing in mm, and fixes what happens when a
structure is absent, so the numbers mean the same thing in every report.

Definitions (all distances in mm, on the voxel grid scaled by ``spacing``):

- **Dice** ``2|P∩T| / (|P| + |T|)``.
- **HD95** the symmetric 95th-percentile Hausdorff distance between the surface voxels of
  prediction and truth: the larger of the two directed 95th percentiles (MONAI's
  ``percentile=95, directed=False``; Huttenlocher et al., PAMI 1993).
- **NSD** normalised surface Dice at a tolerance ``tau``: the share of both surfaces lying
  within ``tau`` of the other surface (Nikolov et al., "Clinically applicable segmentation of
  head and neck anatomy for radiotherapy", JMIR 2021).

Empty structures, chosen once here:

- prediction and truth both empty: every metric is NaN (no evidence either way), and
  :func:`summarise` skips NaN;
- exactly one empty: Dice 0, NSD 0, HD95 = ``missing_distance_mm`` (default: the image
  diagonal in mm, the largest distance the image allows, so means stay finite).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from torch import Tensor

METRIC_NAMES = ("dice", "hd95", "nsd")


def _as_tensor(labels: np.ndarray | Tensor, name: str) -> Tensor:
    if isinstance(labels, Tensor):
        return labels.detach()
    if isinstance(labels, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(labels))
    raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(labels).__name__}")


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing: need one value per spatial axis ({ndim}), got {spacing}")
    if not all(s > 0 and math.isfinite(s) for s in spacing):
        raise ValueError(f"spacing: every value must be finite and > 0 mm, got {spacing}")
    return spacing


def _check_tolerances(
    nsd_tolerance_mm: float | Sequence[float], labels: Sequence[int]
) -> tuple[float, ...]:
    if isinstance(nsd_tolerance_mm, (int, float)):
        tolerances = (float(nsd_tolerance_mm),) * len(labels)
    else:
        tolerances = tuple(float(t) for t in nsd_tolerance_mm)
        if len(tolerances) != len(labels):
            raise ValueError(
                f"nsd_tolerance_mm: need one tolerance per label ({len(labels)}), got {tolerances}"
            )
    if not all(t >= 0 and math.isfinite(t) for t in tolerances):
        raise ValueError(f"nsd_tolerance_mm: tolerances must be finite and >= 0, got {tolerances}")
    return tolerances


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Distance in mm between the centres of the first and the last voxel of an image."""
    return math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing)))


def _pair_metrics(p: Tensor, t: Tensor, spacing: list[float], tolerance: float) -> dict[str, float]:
    """Dice, HD95, NSD of two non-empty binary masks ``[1, 1, *spatial]`` (float)."""
    with warnings.catch_warnings():
        # MONAI calls its own deprecated argument internally (get_mask_edges, MONAI 1.5-1.6).
        warnings.simplefilter("ignore", FutureWarning)
        dice = compute_dice(p, t, include_background=True, ignore_empty=False)
        hd95 = compute_hausdorff_distance(
            p, t, include_background=True, percentile=95, directed=False, spacing=spacing
        )
        nsd = compute_surface_dice(p, t, [tolerance], include_background=True, spacing=spacing)
    return {"dice": float(dice), "hd95": float(hd95), "nsd": float(nsd)}


def segmentation_metrics(
    pred: np.ndarray | Tensor,
    truth: np.ndarray | Tensor,
    labels: Sequence[int],
    spacing: Sequence[float],
    nsd_tolerance_mm: float | Sequence[float] = 2.0,
    missing_distance_mm: float | None = None,
) -> dict[int, dict[str, float]]:
    """Dice, HD95 (mm) and NSD per class of one case.

    Args:
        pred, truth: integer label maps (integer dtype, or float holding whole numbers) of the same shape ``[H, W]`` or ``[D, H, W]`` (numpy or
            torch, any device MONAI supports); a voxel belongs to class ``c`` where it equals ``c``.
        labels: the classes to score (background too, if you list it).
        spacing: voxel size in mm per axis, in the arrays' axis order.
        nsd_tolerance_mm: NSD tolerance, one for all classes or one per entry of ``labels``.
        missing_distance_mm: HD95 when exactly one of prediction and truth is empty; default
            the image diagonal in mm.

    Returns:
        ``{label: {"dice": d, "hd95": mm, "nsd": n}}``; NaN everywhere for a class absent from
        both prediction and truth.
    """
    p_map, t_map = _as_tensor(pred, "pred"), _as_tensor(truth, "truth")
    if p_map.shape != t_map.shape:
        raise ValueError(
            f"pred and truth must have the same shape, got {tuple(p_map.shape)} and "
            f"{tuple(t_map.shape)}"
        )
    if p_map.ndim not in (2, 3):
        raise ValueError(f"pred: expected a 2D or 3D label map, got shape {tuple(p_map.shape)}")
    for name, m in (("pred", p_map), ("truth", t_map)):
        # Float label maps (as loaders often give) are fine while they hold whole numbers.
        if m.is_floating_point() and not bool((m == m.round()).all()):
            raise ValueError(f"{name}: label maps must hold integer labels, got fractional values")
    spacing_mm = _check_spacing(spacing, p_map.ndim)
    labels = [int(c) for c in labels]
    if not labels:
        raise ValueError("labels: need at least one class to score, got []")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels: classes must be distinct, got {labels}")
    tolerances = _check_tolerances(nsd_tolerance_mm, labels)
    if missing_distance_mm is None:
        missing_distance_mm = image_diagonal_mm(p_map.shape, spacing_mm)

    results: dict[int, dict[str, float]] = {}
    for label, tolerance in zip(labels, tolerances):
        p = p_map == label
        t = t_map == label
        p_any, t_any = bool(p.any()), bool(t.any())
        if not p_any and not t_any:
            results[label] = dict.fromkeys(METRIC_NAMES, math.nan)
        elif not p_any or not t_any:
            results[label] = {"dice": 0.0, "hd95": float(missing_distance_mm), "nsd": 0.0}
        else:
            results[label] = _pair_metrics(
                p[None, None].float(), t[None, None].float(), list(spacing_mm), tolerance
            )
    return results


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summarise(
    per_case: Sequence[Mapping[int, Mapping[str, float]]], names: Mapping[int, str]
) -> dict[str, float]:
    """Means over cases per class, and over classes, skipping NaN.

    Args:
        per_case: one :func:`segmentation_metrics` result per case.
        names: a display name for every class that appears in ``per_case``.

    Returns:
        ``{"<name>/<metric>": mean over cases}`` for every class and metric, and
        ``{"mean/<metric>": mean of the class means}``; NaN where no case had a value.
    """
    if not per_case:
        raise ValueError("per_case: need at least one case to summarise, got none")
    labels = sorted({label for case in per_case for label in case})
    missing = [label for label in labels if label not in names]
    if missing:
        raise ValueError(f"names: no display name for classes {missing}")
    if "mean" in (names[label] for label in labels):
        raise ValueError("names: 'mean' is reserved for the mean over classes, got it as a name")
    summary: dict[str, float] = {}
    for metric in METRIC_NAMES:
        class_means = []
        for label in labels:
            values = [case[label][metric] for case in per_case if label in case]
            summary[f"{names[label]}/{metric}"] = _nanmean(values)
            class_means.append(summary[f"{names[label]}/{metric}"])
        summary[f"mean/{metric}"] = _nanmean(class_means)
    return summary
