"""The input's own voxel grid, so results overlay the input array voxel for voxel.

The readers give the model a canonical RAS+ :class:`~medssl.io.volume.Volume`: voxel axes
permuted and flipped (``volume.to_ras_canonical``), world positions unchanged. A label map
written on that grid does not overlay a PIR or LPS input array, so, as nnU-Net and
TotalSegmentator do, ``medssl predict`` writes it back on the input's own grid.
:class:`NativeGrid` remembers that grid (shape, affine, the orientation transform from the
canonical axes to the input's) and the NIfTI header geometry to write with it:

- NIfTI: the file's array order and its own qform and sform (matrices and codes, copied).
- NRRD: the file's array order (``sizes``) and its space directions and origin in RAS.
- DICOM: (columns, rows, slices in stack order, i.e. ascending along the slice normal), the
  order dcm2niix writes a series in before any reorientation; qform = sform, code 1.

The native grid is derived from the canonical volume and the input's axis directions (the
same ``io_orientation`` the reader used), then checked against the input's header: a grid
that does not come back exactly is not used (the caller writes the canonical grid and says
so), never a label map that sits somewhere else.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from medssl.io.volume import Volume

RAS = ornt.axcodes2ornt(("R", "A", "S"))
GRID_TOL_MM = 1e-3
# the geometry fields of a NIfTI header: copied from the input so the output's qform and sform
# (matrices and codes) are the input's
_GEOMETRY_FIELDS = ("pixdim", "xyzt_units", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
                    "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z")


@dataclass(frozen=True)
class NativeGrid:
    """The input's voxel grid and how the canonical grid maps onto it.

    shape: the input array's ``(i, j, k)``; affine: its voxel -> RAS mm; to_native: nibabel
    orientation transform ``[3, 2]`` from the canonical (RAS+) axes to the input's;
    canonical_shape: the canonical array's shape; header: a NIfTI-1 header holding the
    input's qform/sform geometry (no data fields).
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    to_native: np.ndarray
    canonical_shape: tuple[int, int, int]
    header: nib.Nifti1Header = field(repr=False)

    @property
    def axcodes(self) -> str:
        """Where each input axis points, e.g. ``"PIR"`` (the world direction it grows towards)."""
        return "".join(nib.aff2axcodes(self.affine))

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """``array [*canonical_shape]`` -> ``[*shape]``: the same voxels in the input's order."""
        if tuple(array.shape[:3]) != self.canonical_shape:
            raise ValueError(f"array of shape {array.shape} is not on the canonical grid {self.canonical_shape}")
        return np.asfortranarray(ornt.apply_orientation(array, self.to_native))

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`from_canonical`: ``[*shape]`` -> ``[*canonical_shape]``."""
        if tuple(array.shape[:3]) != self.shape:
            raise ValueError(f"array of shape {array.shape} is not on the input grid {self.shape}")
        back = ornt.ornt_transform(ornt.io_orientation(self.affine), RAS)
        return np.asfortranarray(ornt.apply_orientation(array, back))

    def nifti_bytes(self, array: np.ndarray) -> bytes:
        """``array`` (on this grid) as ``.nii.gz`` bytes with the input's qform/sform; the same
        bytes on every run (gzip mtime 0)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array of shape {array.shape} is not on the input grid {self.shape}")
        header = self.header.copy()
        header.set_data_shape(array.shape)
        header.set_data_dtype(array.dtype)
        header.set_data_offset(352)  # 348-byte header + 4-byte empty extension flag
        data = np.asfortranarray(array)
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0) as gz:
            gz.write(header.binaryblock + b"\0\0\0\0")
            gz.write(memoryview(data.reshape(-1, order="F").view(np.uint8)))
        return buf.getvalue()


def native_grid(canonical: Volume, native_affine: np.ndarray, header: nib.Nifti1Header | None = None,
                native_shape: tuple[int, ...] | None = None) -> NativeGrid | None:
    """The grid of an input whose own affine is ``native_affine`` and canonical volume ``canonical``.

    ``header``: the NIfTI geometry to write (default: qform = sform = the affine, code 1);
    ``native_shape``: the input's array shape when known (checked). None when the grid derived
    from the canonical volume is not the input's (shape, or an affine more than
    :data:`GRID_TOL_MM` away at a corner voxel).
    """
    canonical_shape = tuple(int(n) for n in canonical.array.shape[:3])
    if len(canonical_shape) != 3:
        return None
    native_affine = np.asarray(native_affine, dtype=float)
    to_native = ornt.ornt_transform(RAS, ornt.io_orientation(native_affine))
    shape = [0, 0, 0]
    for axis, (target, _flip) in enumerate(to_native):
        shape[int(target)] = canonical_shape[axis]
    affine = canonical.affine @ ornt.inv_ornt_aff(to_native, canonical_shape)
    if native_shape is not None and tuple(int(n) for n in native_shape[:3]) != tuple(shape):
        return None
    if _corner_gap(affine, native_affine, shape) > GRID_TOL_MM:
        return None
    if header is None:
        header = nib.Nifti1Header()
        header.set_qform(affine, code=1)  # scanner-anatomical, as the store's volumes
        header.set_sform(affine, code=1)
        header.set_xyzt_units("mm", "sec")
    return NativeGrid(tuple(shape), affine, to_native, canonical_shape, header)  # type: ignore[arg-type]


def nifti_native_grid(data: bytes, canonical: Volume) -> NativeGrid | None:
    """The grid of a NIfTI-1/2 file (its bytes, ``.nii`` or ``.nii.gz``) read as ``canonical``.

    The output header copies the input's geometry fields (pixdim, qform and sform with their
    codes), so a viewer places the label map exactly where it places the input.
    """
    head = gzip.GzipFile(fileobj=io.BytesIO(data)).read(544) if data[:2] == b"\x1f\x8b" else data[:544]
    header_class = nib.Nifti2Header if 540 in (int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")) else nib.Nifti1Header
    source = header_class.from_fileobj(io.BytesIO(head), check=False)
    shape = tuple(int(n) for n in source.get_data_shape()) + (1, 1)
    out = nib.Nifti1Header()
    for name in _GEOMETRY_FIELDS:  # both codes 0: the pixdim affine comes back from pixdim alone
        out[name] = source[name]
    return native_grid(canonical, source.get_best_affine(), out, shape[:3])


def nrrd_native_grid(data: bytes, canonical: Volume) -> NativeGrid | None:
    """The grid of an attached-header NRRD read as ``canonical``: its axes as stored."""
    import nrrd

    header = nrrd.read_header(io.BytesIO(data))
    directions = np.asarray(header["space directions"], dtype=float)
    sizes = [int(s) for s in np.atleast_1d(header["sizes"])]
    affine = np.eye(4)
    affine[: directions.shape[1], : directions.shape[0]] = directions.T
    origin = header.get("space origin")
    if origin is not None:
        affine[: len(origin), 3] = np.asarray(origin, dtype=float)
    space = str(header.get("space", "")).lower()
    flip = {"left-posterior-superior": (-1, -1), "lps": (-1, -1), "left-anterior-superior": (-1, 1),
            "las": (-1, 1)}.get(space, (1, 1))
    affine = np.diag([*flip, 1.0, 1.0]) @ affine
    return native_grid(canonical, affine, None, (*sizes, 1)[:3])


def dicom_native_grid(canonical: Volume, row_cosine, column_cosine, normal) -> NativeGrid | None:
    """The grid (columns, rows, slices in stack order) of a DICOM series read as ``canonical``.

    Only the axis directions (LPS) are needed: the reader built the canonical volume from this
    very grid, so the affine comes back from the canonical one exactly.
    """
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ np.stack(
        [np.asarray(row_cosine, float), np.asarray(column_cosine, float), np.asarray(normal, float)], axis=1)
    to_native = ornt.ornt_transform(RAS, ornt.io_orientation(affine))
    native = canonical.affine @ ornt.inv_ornt_aff(to_native, canonical.array.shape[:3])
    return native_grid(canonical, native)


def _corner_gap(a: np.ndarray, b: np.ndarray, shape) -> float:
    """Largest world distance (mm) between the two affines' corner voxels of ``shape``."""
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)])
    return float(np.abs(corners @ (np.asarray(a) - np.asarray(b)).T).max())


__all__ = ["NativeGrid", "dicom_native_grid", "native_grid", "nifti_native_grid", "nrrd_native_grid"]
