"""The phantom volume: what a generated case is, and the coordinate conventions it follows.

Conventions (every writer in this package relies on them):

- Arrays are indexed ``[i, j, k]`` with shape ``[I, J, K]`` in **RAS+ voxel order**, the
  order ``nibabel.as_closest_canonical`` gives: increasing ``i`` moves toward the patient's
  **Right**, increasing ``j`` toward **Anterior**, increasing ``k`` toward **Superior**
  (nibabel's ``aff2axcodes(affine) == ('R', 'A', 'S')``).
- ``affine`` is a 4x4 float64 matrix mapping voxel ``(i, j, k, 1)`` to world **RAS mm**
  (NIfTI scanner space, +x = Right, +y = Anterior, +z = Superior). It is diagonal with
  positive spacings: ``world = origin + (i * si, j * sj, k * sk)``.
- DICOM uses the **LPS** patient frame (+x = Left, +y = Posterior, +z = Superior). The same
  point is ``lps = (-x_ras, -y_ras, z_ras)``; ``RAS_TO_LPS`` below does the flip.
- The world position of a voxel is its centre.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
"""3x3 flip between RAS and LPS world coordinates (its own inverse)."""


def make_affine(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    center_mm: tuple[float, float, float],
) -> np.ndarray:
    """Voxel → RAS mm affine (4x4) of a RAS+ grid whose centre voxel sits at ``center_mm``.

    ``center_mm`` is the world (RAS) position of the continuous voxel index
    ``(shape - 1) / 2``.
    """
    if len(shape) != 3 or len(spacing) != 3 or len(center_mm) != 3:
        raise ValueError(
            f"shape, spacing and center_mm need 3 values, got {shape}, {spacing}, {center_mm}"
        )
    if min(shape) < 1:
        raise ValueError(f"shape must be positive, got {shape}")
    if min(spacing) <= 0:
        raise ValueError(f"spacing must be positive mm, got {spacing}")
    sp = np.asarray(spacing, dtype=np.float64)
    origin = np.asarray(center_mm, dtype=np.float64) - sp * (np.asarray(shape) - 1) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = np.diag(sp)
    affine[:3, 3] = origin
    return affine


@dataclass(frozen=True)
class Lesion:
    """One lesion painted into a phantom.

    label: its own value in ``Phantom.labels`` (101, 102, ...);
    kind: ``solid_nodule | ground_glass | hypodense | calcified | cyst``;
    host: name of the organ label it was placed in (e.g. ``lung_right``);
    center_voxel: continuous voxel index ``(i, j, k)`` of the sphere centre;
    center_world: the same point in RAS mm;
    radius_mm: sphere radius in mm;
    bbox: half-open voxel box ``(i0, j0, k0, i1, j1, k1)`` of the lesion's label voxels.
    """

    label: int
    kind: str
    host: str
    center_voxel: tuple[float, float, float]
    center_world: tuple[float, float, float]
    radius_mm: float
    bbox: tuple[int, int, int, int, int, int]


@dataclass
class Phantom:
    """A generated volume with its ground truth.

    image: float32 ``[I, J, K]``, HU for CT, arbitrary non-negative units for MR;
    labels: uint8 ``[I, J, K]`` label map (0 = outside the body);
    label_names: label value → name, for every value that occurs (organs, then lesions);
    affine: 4x4 voxel → RAS mm (see module docstring);
    lesions: the lesions, in label order;
    modality: ``"CT"`` or ``"MR"``; seed: the seed it was made from.
    """

    image: np.ndarray
    labels: np.ndarray
    label_names: dict[int, str]
    affine: np.ndarray
    lesions: list[Lesion] = field(default_factory=list)
    modality: str = "CT"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape != self.labels.shape:
            raise ValueError(
                f"image {self.image.shape} and labels {self.labels.shape} must be equal 3D shapes"
            )
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.image.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def center_world(self) -> np.ndarray:
        """RAS mm of the volume centre, the continuous voxel index ``(shape - 1) / 2``."""
        return self.voxel_to_world((np.asarray(self.shape) - 1) / 2.0)

    @property
    def background_value(self) -> float:
        """Intensity of air: -1000 HU for CT, 0 for MR."""
        return -1000.0 if self.modality == "CT" else 0.0

    def voxel_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """``[..., 3]`` voxel indices → ``[..., 3]`` RAS mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """``[..., 3]`` RAS mm → ``[..., 3]`` continuous voxel indices."""
        inv = np.linalg.inv(self.affine)
        xyz = np.asarray(xyz, dtype=np.float64)
        return xyz @ inv[:3, :3].T + inv[:3, 3]
