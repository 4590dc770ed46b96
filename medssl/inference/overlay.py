"""A PNG a person can look at: three orthogonal slices of the input with the result drawn on.

The slices cross at the centre of mass of the largest structure of the label map, else at
the centre of the highest-scoring detection, else at the volume's centre. The image is
windowed (CT: soft tissue, W 400 / L 40; other modalities: 1st-99th percentile), labels are
coloured half-transparently, detection boxes drawn as rectangles where they cut a slice.
Display follows the radiological convention: axial and coronal show the patient's right on
the left; anterior is up (axial), superior is up (coronal, sagittal); each panel is marked
at its edges (R/L, A/P, S/I) and titled with its slice number and world position (RAS mm).
The legend gives each structure's volume in mL (the whole label map, not the slice) and a
footer the caller's line (``medssl predict``: the model and a digest of the input's voxels).
Rendered with matplotlib's Agg backend (no display needed) and written atomically. Carries
no text but these: no identifier.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medssl.atomic import atomic_write_bytes
from medssl.io.volume import Volume

CT_WINDOW = (-160.0, 240.0)  # level 40, width 400 HU
PNG_DPI = 100


def focus_point(
    volume: Volume, label_map: np.ndarray | None, detections: Sequence[dict[str, Any]]
) -> tuple[int, int, int]:
    """Voxel ``(i, j, k)`` the three slices go through (module docstring)."""
    shape = np.asarray(volume.array.shape[:3])
    if label_map is not None and label_map.any():
        counts = np.bincount(label_map.reshape(-1))
        counts[0] = 0
        coords = np.argwhere(label_map == int(counts.argmax()))
        return tuple(int(v) for v in np.rint(coords.mean(axis=0)))  # type: ignore[return-value]
    if detections:
        best = max(detections, key=lambda d: d["score"])
        centre = (np.asarray(best["box_min_ras_mm"]) + np.asarray(best["box_max_ras_mm"])) / 2
        ijk = np.linalg.inv(volume.affine) @ np.append(centre, 1.0)
        return tuple(int(v) for v in np.clip(np.rint(ijk[:3]), 0, shape - 1))  # type: ignore[return-value]
    return tuple(int(v) for v in shape // 2)  # type: ignore[return-value]


def _window(array: np.ndarray, modality: str | None) -> tuple[float, float]:
    if (modality or "").upper() == "CT":
        return CT_WINDOW
    sample = array.reshape(-1)[:: max(1, array.size // 1_000_000)].astype(np.float32)
    lo, hi = np.percentile(sample, [1.0, 99.0])
    return float(lo), float(max(hi, lo + 1e-6))


# the letters at a panel's (left, right, top, bottom) edges, after _display
EDGE_LETTERS = {"axial": "RLAP", "coronal": "RLSI", "sagittal": "APSI"}


def _views(volume: Volume, point: tuple[int, int, int]) -> list[tuple[str, tuple, float]]:
    """(title, index into the [X, Y, Z] array giving a 2D [X|Y, Y|Z] plane, aspect)."""
    i, j, k = point
    sx, sy, sz = volume.spacing[:3]
    world = volume.affine[:3, :3] @ np.asarray(point, dtype=np.float64) + volume.affine[:3, 3]
    n = volume.array.shape
    return [
        (f"axial {k + 1}/{n[2]} · S {world[2]:.1f} mm", (slice(None), slice(None), k), sy / sx),
        (f"coronal {j + 1}/{n[1]} · A {world[1]:.1f} mm", (slice(None), j, slice(None)), sz / sx),
        (f"sagittal {i + 1}/{n[0]} · R {world[0]:.1f} mm", (i, slice(None), slice(None)), sz / sy),
    ]


def structure_volumes_ml(label_map: np.ndarray, affine: np.ndarray) -> dict[int, float]:
    """Label value -> its volume in mL over the whole map (voxel count x voxel volume)."""
    counts = np.bincount(label_map.reshape(-1))
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    return {v: float(c) * voxel_ml for v, c in enumerate(counts) if v and c}


def _mark_edges(ax, view: str) -> None:
    style = {"color": "#ffd54f", "fontsize": 9, "fontweight": "bold", "transform": ax.transAxes}
    left, right, top, bottom = EDGE_LETTERS[view]
    ax.text(0.01, 0.5, left, ha="left", va="center", **style)
    ax.text(0.99, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.99, top, ha="center", va="top", **style)
    ax.text(0.5, 0.01, bottom, ha="center", va="bottom", **style)


def _display(plane: np.ndarray) -> np.ndarray:
    """A ``[first, second]`` plane of the RAS+ array as rows x columns on screen."""
    return plane.T[::-1, ::-1]  # second axis (A or S) upwards, first (R or A) leftwards


def write_overlay(
    path: str | Path,
    volume: Volume,
    label_map: np.ndarray | None,
    label_names: Mapping[int, str],
    detections: Sequence[dict[str, Any]],
    modality: str | None = None,
    footer: str | None = None,
) -> Path:
    """Render and write the overlay PNG of ``volume`` ``[X, Y, Z]``; returns ``path``.

    label_map: ``[X, Y, Z]`` integers on the volume's grid (0 = background) or ``None``;
    label_names: label value -> name (the legend, with each structure's volume);
    detections: dicts with ``box_min_ras_mm`` / ``box_max_ras_mm`` / ``score`` / ``label``;
    footer: one line under the panels (no identifier: the caller's responsibility).
    """
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas
    from matplotlib.patches import Patch, Rectangle

    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise ValueError(f"overlay needs a volume [X, Y, Z], got shape {array.shape}")
    if label_map is not None and label_map.shape != array.shape:
        raise ValueError(f"label_map shape {label_map.shape} differs from the volume {array.shape}")
    point = focus_point(volume, label_map, detections)
    lo, hi = _window(array, modality)
    colours = matplotlib.colormaps["tab10"]
    inverse = np.linalg.inv(volume.affine)
    figure = Figure(figsize=(12, 4.4), dpi=PNG_DPI, facecolor="black")
    for n, (title, index, aspect) in enumerate(_views(volume, point)):
        ax = figure.add_subplot(1, 3, n + 1)
        ax.imshow(_display(array[index].astype(np.float32)), cmap="gray", vmin=lo, vmax=hi,
                  aspect=aspect, interpolation="nearest")
        if label_map is not None:
            plane = _display(label_map[index])
            rgba = np.zeros((*plane.shape, 4), dtype=np.float32)
            for value in np.unique(plane[plane > 0]):
                rgba[plane == value] = (*colours((int(value) - 1) % 10)[:3], 0.45)
            ax.imshow(rgba, aspect=aspect, interpolation="nearest")
        axes = [a for a, sel in enumerate(index) if isinstance(sel, slice)]  # plane's array axes
        shape = [array.shape[a] for a in axes]
        for det in detections:
            lo_ijk = inverse[:3, :3] @ np.asarray(det["box_min_ras_mm"]) + inverse[:3, 3]
            hi_ijk = inverse[:3, :3] @ np.asarray(det["box_max_ras_mm"]) + inverse[:3, 3]
            box_lo, box_hi = np.minimum(lo_ijk, hi_ijk), np.maximum(lo_ijk, hi_ijk)
            cut = next(a for a in range(3) if a not in axes)
            if not box_lo[cut] - 0.5 <= point[cut] <= box_hi[cut] + 0.5:
                continue
            # screen columns run along the first axis reversed, rows along the second reversed
            x0 = shape[0] - 1 - box_hi[axes[0]]
            y0 = shape[1] - 1 - box_hi[axes[1]]
            ax.add_patch(Rectangle((x0, y0), box_hi[axes[0]] - box_lo[axes[0]],
                                   box_hi[axes[1]] - box_lo[axes[1]], fill=False,
                                   edgecolor="yellow", linewidth=1.2))
        ax.set_title(title, color="white", fontsize=10)
        ax.set_axis_off()
        _mark_edges(ax, title.split()[0])
    volumes = structure_volumes_ml(label_map, volume.affine) if label_map is not None else {}
    if volumes:
        handles = [Patch(color=colours((v - 1) % 10), label=f"{label_names.get(v, str(v))} {ml:,.0f} mL") for v, ml in sorted(volumes.items())[:10]]
        figure.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)),
                      fontsize=8, frameon=False, labelcolor="white", bbox_to_anchor=(0.5, 0.04))
    if footer:
        figure.text(0.5, 0.01, footer, ha="center", va="bottom", color="#bbbbbb", fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", facecolor="black", metadata={"Software": None})
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


__all__ = ["focus_point", "structure_volumes_ml", "write_overlay"]
