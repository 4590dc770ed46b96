"""Geometry on the preprocessed grid: where it lies in the world, and boxes in its voxels.

A box is ``(start_0, .., start_S-1, end_0, .., end_S-1)`` in voxel-edge coordinates: voxel
``i`` spans ``[i, i + 1)``, so a structure covering voxels 3..5 has start 3 and end 6
(MONAI's detector ``"xyzxyz"`` mode with the end exclusive). Boxes of a set are ``[N, 2S]``
float32; their classes ``[N]`` int64.

World boxes (the store's ``labels.boxes``, RAS mm) give the structure's outer extent: the
min and max corners of the union of its voxels, edges included. The label cache turns them
into boxes on the cached grid (:func:`world_to_voxel_boxes` through :func:`cached_affine`);
crops and augmentation move them on (:mod:`medssl.data.boxes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def empty_boxes(spatial_dims: int = 3) -> np.ndarray:
    return np.zeros((0, 2 * spatial_dims), dtype=np.float32)


def component_boxes(labels: np.ndarray, values: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the connected components (face connectivity) of each label value in ``values``.

    ``labels`` ``[X, Y, Z]`` (or ``[X, Y]``) integer → boxes ``[N, 2S]`` float32 and classes
    ``[N]`` int64 (the position of the component's value in ``values``), ordered by value
    then by component.
    """
    dims = labels.ndim
    boxes, classes = [], []
    for position, value in enumerate(values):
        components, n = ndimage.label(labels == value)
        if n == 0:
            continue
        for found in ndimage.find_objects(components):
            boxes.append([s.start for s in found] + [s.stop for s in found])
            classes.append(position)
    if not boxes:
        return empty_boxes(dims), np.zeros(0, dtype=np.int64)
    return np.asarray(boxes, dtype=np.float32), np.asarray(classes, dtype=np.int64)


def cached_affine(store_affine: np.ndarray, store_shape: Sequence[int], cached_shape: Sequence[int]) -> np.ndarray:
    """The voxel → RAS mm affine ``[4, 4]`` of a volume resampled from ``store_shape`` to ``cached_shape``.

    Resampling keeps the field of view edge to edge (``align_corners=False``), so cached
    voxel centre ``i'`` sits at store index ``(i' + 0.5) * r - 0.5`` with ``r = n / n'``.
    """
    store_affine = np.asarray(store_affine, dtype=np.float64)
    if store_affine.shape != (4, 4) or len(store_shape) != 3 or len(cached_shape) != 3:
        raise ValueError(f"affine {store_affine.shape}, shapes {tuple(store_shape)} → {tuple(cached_shape)}: expected 4x4 and two 3D shapes")
    ratio = np.asarray(store_shape, dtype=np.float64) / np.asarray(cached_shape, dtype=np.float64)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(ratio)
    scale[:3, 3] = (ratio - 1.0) / 2.0
    return store_affine @ scale


def world_to_voxel_boxes(lower_mm: np.ndarray, upper_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World boxes (RAS mm corners ``[N, 3]`` each) → voxel-edge boxes ``[N, 6]`` on the grid of ``affine``.

    All 8 corners go through the inverse affine and the box is their voxel-axis extent, so
    an oblique grid gets the box that encloses the world box.
    """
    lower_mm, upper_mm = np.atleast_2d(lower_mm).astype(np.float64), np.atleast_2d(upper_mm).astype(np.float64)
    if lower_mm.shape != upper_mm.shape or lower_mm.shape[1] != 3:
        raise ValueError(f"world box corners {lower_mm.shape} and {upper_mm.shape}: expected two [N, 3] arrays")
    if np.any(lower_mm > upper_mm):
        raise ValueError("world box corners: every min corner must be <= its max corner")
    if len(lower_mm) == 0:
        return empty_boxes(3)
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    pick = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=bool)  # [8, 3]
    corners = np.where(pick[None], upper_mm[:, None, :], lower_mm[:, None, :])  # [N, 8, 3]
    homogeneous = np.concatenate([corners, np.ones((*corners.shape[:2], 1))], axis=2)
    voxel = (homogeneous @ inverse.T)[..., :3] + 0.5  # centres are integers; edges lie half a voxel out
    return np.concatenate([voxel.min(1), voxel.max(1)], axis=1).astype(np.float32)
