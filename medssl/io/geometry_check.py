"""The one geometry check every volume passes when it is read and before it is written.

A header may hold any float: ``pixdim = 1e38`` gives a finite float64 affine that becomes
``-inf`` once NIfTI stores it as float32, while the manifest still says finite. So spacing
must be finite, positive and within what an image of a body can have, and every affine
entry finite and small enough that float32 holds it with room for the volume's extent.
"""

from __future__ import annotations

import numpy as np

from medssl.errors import IngestError
from medssl.types import RejectReason

MIN_SPACING_MM = 1e-4  # 0.1 µm: below optical coherence tomography's finest sampling
MAX_SPACING_MM = 1e4  # 10 m: no voxel of a body (a planar image's one slice is 1 mm)
MAX_WORLD_MM = 1e7  # 10 km: an origin past this is a corrupt header, not a scanner's frame


def check_geometry(affine: np.ndarray, what: str) -> None:
    """Raise ``IngestError(GEOMETRY)`` unless ``affine`` (4x4, voxel -> mm) is a usable frame.

    ``what`` names the input or output in the message (never a path: "NIfTI", "volume").
    """
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise IngestError(RejectReason.GEOMETRY, f"{what} affine has shape {affine.shape}, not 4x4")
    if not np.all(np.isfinite(affine)):
        raise IngestError(RejectReason.GEOMETRY, f"{what} affine holds non-finite values")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing < MIN_SPACING_MM) or np.any(spacing > MAX_SPACING_MM):
        shown = ", ".join(f"{v:.3g}" for v in spacing)
        raise IngestError(
            RejectReason.GEOMETRY,
            f"{what} voxel spacing ({shown}) mm is outside {MIN_SPACING_MM:g}-{MAX_SPACING_MM:g} mm",
        )
    if np.any(np.abs(affine[:3, 3]) > MAX_WORLD_MM):
        raise IngestError(
            RejectReason.GEOMETRY,
            f"{what} origin lies more than {MAX_WORLD_MM:g} mm from the world's origin",
        )
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9 * float(np.prod(spacing)):
        raise IngestError(
            RejectReason.GEOMETRY, f"{what} affine is singular (its voxel axes are parallel)"
        )
