"""The canonical volume: an array in RAS+ voxel order with its world affine in mm.

Every reader (DICOM, NIfTI, NRRD) ends here, so the store holds one convention.
World space is NIfTI's RAS+: +x points to the patient's Right, +y Anterior, +z Superior
(DICOM's LPS+ differs by negating x and y). "RAS+ voxel order" means the voxel axes are
permuted and flipped so that index i grows along +x, j along +y, k along +z; for an
oblique acquisition each voxel axis is the one closest to that world axis.

Serialisation is deterministic (gzip mtime 0), so the same input gives the same bytes
and the same sha256 in the manifest on every run.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from medssl.io.geometry_check import check_geometry

try:  # Intel ISA-L gzip: same format, several times faster than zlib
    from isal import igzip as _gzip
except ImportError:  # pragma: no cover - optional speed-up
    _gzip = gzip

NIFTI_GZIP_LEVEL = 1  # volumes are compressed once and read many times; level 1 is ~5x faster than 6 at ~10% size


@dataclass
class Volume:
    """``array`` [X, Y, Z] (or [X, Y] for 2D images) and ``affine`` voxel -> world (mm).

    3D volumes are in RAS+ voxel order with a RAS world affine; 2D projection images
    have no patient frame and keep display order (x = column, y = row).
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict = field(default_factory=dict)
    corrections: list[str] = field(default_factory=list)

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, : min(self.array.ndim, 3)], axis=0))

    @property
    def axcodes(self) -> str:
        if self.array.ndim == 2:
            return "2D"
        return "".join(nib.aff2axcodes(self.affine))


def lps_to_ras(affine_lps: np.ndarray) -> np.ndarray:
    """DICOM patient space (LPS) to NIfTI world space (RAS): negate x and y."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps


def to_ras_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip voxel axes so they run along +x, +y, +z (the closest canonical).

    Exact for oblique volumes too: only the voxel order changes, the world positions of
    all voxels stay the same (the affine absorbs the permutation).
    """
    current = ornt.io_orientation(affine)
    target = ornt.axcodes2ornt(("R", "A", "S"))
    transform = ornt.ornt_transform(current, target)
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return array, affine
    out = ornt.apply_orientation(array, transform)
    new_affine = affine @ ornt.inv_ornt_aff(transform, array.shape[:3])
    return np.asfortranarray(out), new_affine  # NIfTI stores x fastest: no transpose on write


def compact_dtype(array: np.ndarray) -> np.ndarray:
    """Smallest exact integer type for integral data, else float32 (native byte order).

    Integer data beyond int32 become float32 too (exact up to 2**24). The integrality
    test of float data runs in chunks, so no full-size temporary is made.
    """
    if np.issubdtype(array.dtype, np.integer) or (array.size and _is_integral(array)):
        lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        for dtype in (np.uint8, np.int16, np.uint16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return array.astype(dtype, copy=False)
    return array.astype(np.float32, copy=False)


def _is_integral(array: np.ndarray, chunk: int = 1 << 20) -> bool:
    """Whether every value of a float array is a finite whole number."""
    if array.dtype.kind != "f":
        return False
    flat = np.ravel(array, order="K")  # a view for C- or Fortran-ordered arrays
    for start in range(0, flat.size, chunk):
        part = flat[start : start + chunk]
        if not np.all(np.isfinite(part)) or not np.array_equal(part, np.round(part)):
            return False
    return True


def nifti_image(volume: Volume) -> nib.Nifti1Image:
    """The volume as NIfTI-1 with qform and sform both holding its affine.

    Their code says what the affine means: DICOM and NRRD volumes are scanner-anatomical
    (1); a NIfTI input keeps the code of the form its affine came from (``meta["affine_code"]``,
    e.g. 2 aligned, 3 Talairach, 4 MNI), and a pixdim-only input gets 2, never 0 (readers
    would fall back to pixdim and lose the orientation). A sheared affine, which a quaternion
    cannot hold, is written in the sform only. An affine that float32 cannot hold, or whose
    spacing no body has, is refused (``IngestError`` ``geometry``) rather than written as inf.
    """
    check_geometry(volume.affine, "volume to write")
    img = nib.Nifti1Image(volume.array, volume.affine)
    img.header.set_xyzt_units("mm", "sec")
    code = volume.meta.get("affine_code")
    code = 1 if code is None else (int(code) or 2)
    img.header.set_sform(volume.affine, code=code)
    img.header.set_qform(volume.affine, code=code)
    if not np.allclose(img.header.get_qform(), volume.affine, atol=1e-4):
        img.header.set_qform(volume.affine, code=0)
    return img


def nifti_gz_bytes(volume: Volume) -> bytes:
    """The volume as ``.nii.gz`` bytes, identical on every run for the same volume.

    Header and voxels are fed to the compressor straight from memory (the array in
    Fortran order is already NIfTI's on-disk order), with no uncompressed copy in between.
    """
    img = nifti_image(volume)
    header = img.header
    header.set_data_offset(352)  # 348-byte header + 4-byte empty extension flag
    data = np.asarray(volume.array, dtype=header.get_data_dtype())
    if not data.flags.f_contiguous:
        data = np.asfortranarray(data)
    buf = io.BytesIO()
    with _gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=NIFTI_GZIP_LEVEL, mtime=0) as gz:
        gz.write(header.binaryblock + b"\0\0\0\0")
        gz.write(memoryview(data.reshape(-1, order="F").view(np.uint8)))
    return buf.getvalue()
