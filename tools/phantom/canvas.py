"""The drawing surface the anatomy is painted on: a tissue map and a label map on one grid.

Tissues decide intensity (one value per tissue and modality); labels are the ground truth
a model should predict. Several tissues can share a label (vertebral cortex and marrow are
both ``vertebrae``), so the two maps are kept apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tools.phantom.volume import make_affine

# tissue name -> (CT HU, T1-weighted MR a.u.)
TISSUES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, 0.0),
    "fat": (-100.0, 900.0),
    "muscle": (45.0, 350.0),
    "lung": (-850.0, 30.0),
    "heart": (40.0, 380.0),
    "liver": (110.0, 520.0),  # CT: portal-venous phase, as the enhanced aorta and veins below
    "spleen": (115.0, 400.0),
    "kidney": (165.0, 450.0),
    "aorta": (200.0, 80.0),
    "vein": (150.0, 120.0),
    "cortical_bone": (700.0, 60.0),
    "marrow": (250.0, 650.0),
    "csf": (10.0, 150.0),
    "disc": (80.0, 300.0),
    "nodule": (35.0, 420.0),
    "ground_glass": (-550.0, 120.0),
    "hypodense": (15.0, 250.0),
    "calcification": (900.0, 40.0),
    "cyst": (5.0, 150.0),
}
TISSUE_ID: dict[str, int] = {name: n for n, name in enumerate(TISSUES)}

ORGAN_LABELS: dict[int, str] = {
    0: "background",
    1: "body",
    2: "muscle",
    3: "lung_right",
    4: "lung_left",
    5: "heart",
    6: "liver",
    7: "spleen",
    8: "kidney_right",
    9: "kidney_left",
    10: "aorta",
    11: "vessels",
    12: "vertebrae",
    13: "spinal_canal",
    14: "intervertebral_disc",
    15: "ribs",
}
LABEL_ID: dict[str, int] = {name: value for value, name in ORGAN_LABELS.items()}
FIRST_LESION_LABEL = 101


def tissue_lut(modality: str) -> np.ndarray:
    """``[n_tissues]`` float32 intensity per tissue id for ``"CT"`` (HU) or ``"MR"`` (T1 a.u.)."""
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    column = 0 if modality == "CT" else 1
    return np.array([values[column] for values in TISSUES.values()], dtype=np.float32)


@dataclass
class Canvas:
    """Tissue and label maps ``[I, J, K]`` (uint8) on a RAS+ grid, with coordinate helpers.

    ``xn, yn, zn`` are open grids (shapes ``[I,1,1]``, ``[1,J,1]``, ``[1,1,K]``) of
    normalised coordinates in (-1, 1) across the field of view: +x = patient Right,
    +y = Anterior, +z = Superior. ``xmm, ymm, zmm`` are the same in mm from the centre.
    Organs are drawn in normalised units so any shape/spacing gives a full body.
    """

    tissue: np.ndarray
    labels: np.ndarray
    spacing: np.ndarray
    affine: np.ndarray
    xmm: np.ndarray
    ymm: np.ndarray
    zmm: np.ndarray
    half_extent: np.ndarray

    @classmethod
    def empty(
        cls,
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
        center_mm: tuple[float, float, float],
        scale: tuple[float, float, float] = (1.0, 1.0, 1.0),
        shift: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> Canvas:
        """An empty canvas; ``scale`` and ``shift`` (fractions of the half field of view) make
        this body larger/smaller and off-centre along each axis, as patients differ: the
        anatomy is drawn at ``(position - shift * half_extent) / scale``."""
        affine = make_affine(shape, spacing, center_mm)
        sp = np.asarray(spacing, dtype=np.float64)
        half = np.asarray(shape) * sp / 2.0
        axes = [((np.arange(n) - (n - 1) / 2.0) * s - o * h) / k for n, s, o, h, k in zip(shape, sp, shift, half, scale)]
        return cls(
            tissue=np.zeros(shape, dtype=np.uint8),
            labels=np.zeros(shape, dtype=np.uint8),
            spacing=sp,
            affine=affine,
            xmm=axes[0].reshape(-1, 1, 1).astype(np.float32),
            ymm=axes[1].reshape(1, -1, 1).astype(np.float32),
            zmm=axes[2].reshape(1, 1, -1).astype(np.float32),
            half_extent=half,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.tissue.shape  # type: ignore[return-value]

    @property
    def xn(self) -> np.ndarray:
        return self.xmm / np.float32(self.half_extent[0])

    @property
    def yn(self) -> np.ndarray:
        return self.ymm / np.float32(self.half_extent[1])

    @property
    def zn(self) -> np.ndarray:
        return self.zmm / np.float32(self.half_extent[2])

    def paint(self, mask: np.ndarray, tissue: str, label: str | int | None) -> None:
        """Set ``tissue`` (and ``label`` unless None) where ``mask`` (broadcastable) holds."""
        mask = np.broadcast_to(mask, self.shape)
        np.copyto(self.tissue, np.uint8(TISSUE_ID[tissue]), where=mask)
        if label is not None:
            value = LABEL_ID[label] if isinstance(label, str) else int(label)
            np.copyto(self.labels, np.uint8(value), where=mask)

    def ellipsoid(
        self, center: tuple[float, float, float], radii: tuple[float, float, float]
    ) -> np.ndarray:
        """Boolean ``[I, J, K]``: inside an axis-aligned ellipsoid in normalised units."""
        (cx, cy, cz), (rx, ry, rz) = center, radii
        return (
            ((self.xn - cx) / rx) ** 2 + ((self.yn - cy) / ry) ** 2 + ((self.zn - cz) / rz) ** 2
        ) <= 1.0

    def ellipse(self, center: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
        """Boolean ``[I, J, 1]``: inside an elliptic cylinder along z, normalised units."""
        (cx, cy), (rx, ry) = center, radii
        return (((self.xn - cx) / rx) ** 2 + ((self.yn - cy) / ry) ** 2) <= 1.0

    def to_mm(self, point_normalised: tuple[float, float, float]) -> np.ndarray:
        """Normalised (x, y, z) → mm from the volume centre."""
        return np.asarray(point_normalised, dtype=np.float64) * self.half_extent

    def segment(
        self, a_mm: np.ndarray, b_mm: np.ndarray, radius_mm: float
    ) -> tuple[tuple[slice, ...], np.ndarray]:
        """A tube of ``radius_mm`` around segment a→b (mm from centre), as (block, mask in block).

        Computed only inside the segment's bounding block so thin vessels stay cheap.
        """
        a, b = np.asarray(a_mm, dtype=np.float64), np.asarray(b_mm, dtype=np.float64)
        lo_mm = np.minimum(a, b) - radius_mm
        hi_mm = np.maximum(a, b) + radius_mm
        centre_index = (np.asarray(self.shape) - 1) / 2.0
        lo = np.clip(np.floor(lo_mm / self.spacing + centre_index).astype(int), 0, self.shape)
        hi = np.clip(np.ceil(hi_mm / self.spacing + centre_index).astype(int) + 1, 0, self.shape)
        block = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        px = self.xmm[block[0], :, :] - a[0]
        py = self.ymm[:, block[1], :] - a[1]
        pz = self.zmm[:, :, block[2]] - a[2]
        d = b - a
        length2 = float(d @ d) or 1.0
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / length2, 0.0, 1.0)
        dist2 = (px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2
        return block, dist2 <= radius_mm**2
