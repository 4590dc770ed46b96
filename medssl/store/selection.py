"""Which store rows preprocessing takes, and which voxels count as foreground.

A plan crops RAS volumes at least ``MIN_SLICES`` thick (:func:`is_volume_3d`), each frame of a
4D series on its own (:func:`frame_rows`); 2D images go to the 2D cache (:func:`is_image_2d`).
Modalities are keyed by their DICOM code, ``OT`` when the store does not know it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from medssl.store.volume_row import VolumeRow

MIN_SLICES = 8  # thinner "3D" volumes are single slices or localisers, not volumes to crop
CT_FOREGROUND_HU = -950.0  # above air, below lung parenchyma: lungs stay in the intensity statistics
OTHER_MODALITY = "OT"  # DICOM's "other": volumes whose modality the store does not know


def modality_key(modality: str | None) -> str:
    return (modality or OTHER_MODALITY).upper()


def is_volume_3d(row: VolumeRow, min_slices: int = MIN_SLICES) -> bool:
    """A RAS volume at least ``min_slices`` thick: 3D, or a 4D series whose frames are 3D volumes
    (each frame is then cached as one volume: :func:`frame_rows`); 2D images are left out."""
    if row.ndim not in (3, 4) or row.axcodes not in (None, "RAS"):
        return False
    return min(row.shape[:3]) >= min_slices


def is_image_2d(row: VolumeRow) -> bool:
    """A 2D image (radiograph, ultrasound frame): the 2D image cache's, never cropped in 3D."""
    return row.ndim == 2


def frame_rows(row: VolumeRow) -> list[VolumeRow]:
    """A manifest row as the 3D units training sees: itself, or one per frame of a 4D series.

    A frame's ``volume_id`` is ``<volume_id>.t<frame>`` (its cache file name), ``frame`` its
    index and ``shape`` its 3D shape; patient and study stay those of the series, so splits
    keep frames together.
    """
    if row.ndim != 4:
        return [row]
    return [
        dataclasses.replace(row, volume_id=f"{row.volume_id}.t{t:04d}", frame=t, shape=row.shape[:3])
        for t in range(row.shape[3])
    ]


def foreground_mask(array: np.ndarray, modality: str | None) -> np.ndarray:
    """Voxels inside the body: CT above air (HU > -950); others above 10% of the 1–99% range."""
    if modality_key(modality) == "CT":
        return array > CT_FOREGROUND_HU
    flat = array.reshape(-1)
    lo, hi = np.percentile(flat[:: max(1, flat.size // 1_000_000)], [1.0, 99.0])  # ~1M voxels are plenty
    return array > lo + 0.1 * (hi - lo)
