"""Slice grids in the DICOM patient frame (LPS mm) and resampling the phantom onto them.

A :class:`SliceGrid` is what a stack of single-frame DICOM images says about itself:
``ImageOrientationPatient`` (row and column direction cosines), one
``ImagePositionPatient`` per slice (centre of pixel ``(row 0, col 0)``), ``PixelSpacing``.
Pixel ``(r, c)`` of slice ``s`` lies at::

    positions[s] + c * pixel_spacing[1] * row_cosine + r * pixel_spacing[0] * col_cosine

(DICOM PS3.3 C.7.6.2.1.1: ``row_cosine`` is the direction of increasing column index).
Sampling the phantom at exactly those world points makes every written series tell the
truth about where each pixel is, whatever its orientation, tilt or gaps.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tools.phantom.volume import RAS_TO_LPS, Phantom

NAMED_ORIENTATIONS: dict[str, tuple[float, ...]] = {
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
}
_DECIMALS = 6  # DS values keep 6 decimals; grids are built from the rounded numbers


@dataclass(frozen=True)
class SliceGrid:
    """Geometry of a slice stack, LPS mm.

    row_cosine, col_cosine: ``(3,)`` unit vectors, ``ImageOrientationPatient[:3]`` / ``[3:]``;
    positions: ``(n_slices, 3)`` ``ImagePositionPatient`` per slice, in stacking order;
    rows, cols: pixels per slice; pixel_spacing: ``(row spacing, column spacing)`` mm, as
    DICOM ``PixelSpacing`` (row spacing = distance between rows, along ``col_cosine``);
    slice_thickness: mm; gantry_tilt_deg: nominal tilt written to ``GantryDetectorTilt``.
    """

    row_cosine: np.ndarray
    col_cosine: np.ndarray
    positions: np.ndarray
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]
    slice_thickness: float
    gantry_tilt_deg: float = 0.0

    @property
    def n_slices(self) -> int:
        return int(self.positions.shape[0])

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.row_cosine, self.col_cosine)
        return n / np.linalg.norm(n)

    @property
    def image_orientation(self) -> list[float]:
        return [float(v) for v in (*self.row_cosine, *self.col_cosine)]

    @property
    def slice_spacing(self) -> float:
        """Distance between consecutive slice planes along the normal (mm)."""
        if self.n_slices < 2:
            return self.slice_thickness
        return float(
            np.round(np.dot(self.positions[1] - self.positions[0], self.normal), _DECIMALS)
        )

    def pixel_world_lps(self) -> np.ndarray:
        """``(n_slices, rows, cols, 3)`` LPS mm of every pixel centre."""
        dr, dc = self.pixel_spacing
        r = np.arange(self.rows, dtype=np.float64)[:, None, None] * dr * self.col_cosine
        c = np.arange(self.cols, dtype=np.float64)[None, :, None] * dc * self.row_cosine
        return self.positions[:, None, None, :] + (r + c)[None]

    def slice_affine_lps(self, s: int) -> np.ndarray:
        """4x4 mapping ``(c, r, 0, 1)`` of slice ``s`` to LPS mm."""
        dr, dc = self.pixel_spacing
        m = np.eye(4)
        m[:3, 0] = self.row_cosine * dc
        m[:3, 1] = self.col_cosine * dr
        m[:3, 2] = self.normal
        m[:3, 3] = self.positions[s]
        return m


def _orientation_vectors(orientation: str | Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(orientation, str):
        if orientation not in NAMED_ORIENTATIONS:
            raise ValueError(
                f"orientation {orientation!r}: use one of "
                f"{sorted(NAMED_ORIENTATIONS)} or a 6-vector"
            )
        iop = np.asarray(NAMED_ORIENTATIONS[orientation], dtype=np.float64)
    else:
        iop = np.asarray(orientation, dtype=np.float64)
        if iop.shape != (6,):
            raise ValueError(f"orientation must be 6 direction cosines, got shape {iop.shape}")
    row, col = iop[:3], iop[3:]
    if min(np.linalg.norm(row), np.linalg.norm(col)) < 1e-6:
        raise ValueError(f"orientation {iop.tolist()}: zero-length direction")
    row = row / np.linalg.norm(row)
    col = col - np.dot(col, row) * row  # make it orthonormal: readers assume so
    col = col / np.linalg.norm(col)
    return np.round(row, 8), np.round(col, 8)


def _matching_axes(directions: Sequence[np.ndarray]) -> tuple[int, int, int]:
    """Phantom axes (0=i, 1=j, 2=k) closest to the (row, col, normal) LPS directions."""
    # Phantom voxel axes point to R, A, S, i.e. -x, -y, +z in LPS; only |cos| matters here.
    cos = np.abs(np.array([[d[a] for a in range(3)] for d in directions]))
    best = max(itertools.permutations(range(3)), key=lambda p: sum(cos[n, p[n]] for n in range(3)))
    return best  # type: ignore[return-value]


def make_slice_grid(
    phantom: Phantom,
    orientation: str | Sequence[float] = "axial",
    *,
    gantry_tilt_deg: float = 0.0,
) -> SliceGrid:
    """The slice stack covering ``phantom``, centred on its centre.

    orientation: ``"axial" | "coronal" | "sagittal"`` or a 6-vector ``ImageOrientationPatient``
    (LPS, oblique allowed). Rows, columns and slices take the size and spacing of the phantom
    axis closest to each direction, so axis-aligned grids hit voxel centres exactly.

    gantry_tilt_deg: CT gantry tilt about the patient's left-right axis. The image plane is
    tilted (``col_cosine = (0, cos t, -sin t)``) while slice positions advance along the
    table (+z) by the phantom's k spacing: a sheared stack, as tilted CT scanners write it.
    Only valid with ``orientation="axial"``.
    """
    if gantry_tilt_deg and orientation != "axial":
        raise ValueError(f"gantry_tilt_deg={gantry_tilt_deg}: tilt needs orientation='axial'")
    if gantry_tilt_deg:
        t = np.deg2rad(gantry_tilt_deg)
        row = np.array([1.0, 0.0, 0.0])
        col = np.round(np.array([0.0, np.cos(t), -np.sin(t)]), 8)
    else:
        row, col = _orientation_vectors(orientation)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    a_row, a_col, a_slice = _matching_axes([row, col, normal])
    shape, spacing = phantom.shape, phantom.spacing
    cols, rows, n_slices = shape[a_row], shape[a_col], shape[a_slice]
    dc, dr, ds = spacing[a_row], spacing[a_col], spacing[a_slice]
    stack_dir = np.array([0.0, 0.0, 1.0]) if gantry_tilt_deg else normal
    center = RAS_TO_LPS @ phantom.center_world
    first = center - row * dc * (cols - 1) / 2.0 - col * dr * (rows - 1) / 2.0
    steps = (np.arange(n_slices) - (n_slices - 1) / 2.0)[:, None] * ds * stack_dir
    positions = np.round(first + steps, _DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    return SliceGrid(
        row_cosine=row,
        col_cosine=col,
        positions=positions,
        rows=int(rows),
        cols=int(cols),
        pixel_spacing=(float(dr), float(dc)),
        slice_thickness=float(ds),
        gantry_tilt_deg=float(gantry_tilt_deg),
    )


def sample_on_grid(
    volume: np.ndarray, affine: np.ndarray, grid: SliceGrid, *, order: int, cval: float
) -> np.ndarray:
    """Resample ``volume [I, J, K]`` (RAS+ voxels, ``affine`` voxel → RAS) onto ``grid``.

    Returns ``[n_slices, rows, cols]`` in ``volume``'s dtype for ``order=0`` (labels) and
    float32 otherwise. Where every grid point falls on a voxel centre (axis-aligned grids)
    values are copied exactly; otherwise ``scipy.ndimage.map_coordinates`` interpolates
    with spline ``order`` and fills points outside the volume with ``cval``.
    """
    lps = grid.pixel_world_lps().reshape(-1, 3)
    ras = lps @ RAS_TO_LPS.T
    inv = np.linalg.inv(affine)
    ijk = ras @ inv[:3, :3].T + inv[:3, 3]
    nearest = np.rint(ijk)
    on_centres = np.all(np.abs(ijk - nearest) < 1e-4)
    inside = np.all((nearest >= 0) & (nearest < np.asarray(volume.shape)))
    out_shape = (grid.n_slices, grid.rows, grid.cols)
    if on_centres and inside:
        idx = nearest.astype(np.intp)
        values = volume[idx[:, 0], idx[:, 1], idx[:, 2]]
        return (
            values.reshape(out_shape)
            if order == 0
            else values.astype(np.float32).reshape(out_shape)
        )
    values = ndimage.map_coordinates(
        volume if order == 0 else volume.astype(np.float32, copy=False),
        ijk.T,
        order=order,
        mode="constant",
        cval=cval,
        prefilter=order > 1,
    )
    return values.reshape(out_shape)
