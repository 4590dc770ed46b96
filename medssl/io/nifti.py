"""NIfTI-1/2 and NRRD readers that check the header before allocating anything.

A header can claim any size ("header bomb"); dimensions, data type and the implied byte
count are validated against ``max_bytes`` first, then only that many bytes are
decompressed. Geometry must be real: a singular or non-finite affine is refused, and
non-finite voxel values are refused because they would poison training.
"""

from __future__ import annotations

import gzip
import io
import zlib

import nibabel as nib
import numpy as np

from medssl.errors import IngestError
from medssl.io.volume import Volume, lps_to_ras, to_ras_canonical
from medssl.types import RejectReason

MAX_VOLUME_BYTES = 4 << 30

# NRRD type names (teem's spellings) -> bytes per sample
_NRRD_ITEMSIZE = {
    **dict.fromkeys(["signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"], 1),
    **dict.fromkeys(["short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"], 2),
    **dict.fromkeys(["int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"], 4),
    **dict.fromkeys(["longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"], 8),
}


def read_nifti(data: bytes, *, max_bytes: int = MAX_VOLUME_BYTES) -> Volume:
    """A NIfTI file's bytes (``.nii`` or ``.nii.gz``) as a canonical volume."""
    gzipped = data[:2] == b"\x1f\x8b"
    head = _gunzip(data, 544) if gzipped else data[:544]
    if len(head) < 348:
        raise IngestError(RejectReason.TRUNCATED, f"NIfTI header holds {len(head)} of 348 bytes")
    header_class = _header_class(head)
    try:
        header = header_class.from_fileobj(io.BytesIO(head), check=True)
    except Exception as exc:  # noqa: BLE001 - nibabel raises HeaderDataError and friends
        raise IngestError(RejectReason.MALFORMED, f"NIfTI header invalid ({type(exc).__name__})") from None
    shape = header.get_data_shape()
    try:
        itemsize = np.dtype(header.get_data_dtype()).itemsize
    except Exception:  # noqa: BLE001
        raise IngestError(RejectReason.UNSUPPORTED, "NIfTI data type not supported") from None
    _check_size(shape, itemsize, max_bytes, "NIfTI")
    offset = int(header.get_data_offset())
    needed = offset + int(np.prod(shape, dtype=np.int64)) * itemsize
    raw = _gunzip(data, needed) if gzipped else data[:needed]
    if len(raw) < needed:
        raise IngestError(RejectReason.TRUNCATED, f"NIfTI data holds {len(raw)} of {needed} bytes")
    image_class = nib.Nifti2Image if header_class is nib.Nifti2Header else nib.Nifti1Image
    try:
        img = image_class.from_bytes(raw)
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001
        raise IngestError(RejectReason.MALFORMED, f"NIfTI data unreadable ({type(exc).__name__})") from None
    qcode, scode = int(img.header["qform_code"]), int(img.header["sform_code"])
    corrections = [] if (qcode or scode) else ["no_qform_sform:pixdim_affine"]
    return _finish(array, img.affine, corrections, "NIfTI")


def read_nrrd(data: bytes, *, max_bytes: int = MAX_VOLUME_BYTES) -> Volume:
    """An attached-header NRRD's bytes as a canonical volume (world space from the header)."""
    import nrrd

    stream = io.BytesIO(data)
    try:
        header = nrrd.read_header(stream)
    except Exception as exc:  # noqa: BLE001 - pynrrd raises NRRDError, ValueError, ...
        raise IngestError(RejectReason.MALFORMED, f"NRRD header invalid ({type(exc).__name__})") from None
    if "data file" in header or "datafile" in header:
        raise IngestError(RejectReason.UNSUPPORTED, "detached NRRD data files are not read (a header may point anywhere)")
    sizes = [int(s) for s in np.atleast_1d(header.get("sizes", []))]
    dims = int(header.get("dimension", len(sizes)))
    if not sizes or len(sizes) != dims or dims not in (2, 3, 4):
        raise IngestError(RejectReason.UNSUPPORTED, f"NRRD of dimension {dims} with sizes {sizes}")
    itemsize = _NRRD_ITEMSIZE.get(str(header.get("type", "")).strip().lower())
    if itemsize is None:
        raise IngestError(RejectReason.UNSUPPORTED, "NRRD data type not supported")
    _check_size(tuple(sizes), itemsize, max_bytes, "NRRD")
    affine = _nrrd_affine(header, dims)
    try:
        array = nrrd.read_data(header, stream, index_order="F")
    except Exception as exc:  # noqa: BLE001
        raise IngestError(RejectReason.TRUNCATED if isinstance(exc, (EOFError, zlib.error)) else RejectReason.MALFORMED, f"NRRD data unreadable ({type(exc).__name__})") from None
    if tuple(array.shape) != tuple(sizes):
        raise IngestError(RejectReason.TRUNCATED, f"NRRD data of shape {array.shape} for sizes {sizes}")
    return _finish(array, affine, [], "NRRD")


def _nrrd_affine(header: dict, dims: int) -> np.ndarray:
    space = str(header.get("space", "")).lower()
    directions = header.get("space directions")
    origin = header.get("space origin")
    if directions is None:
        raise IngestError(RejectReason.GEOMETRY, "NRRD without space directions")
    rows = [d for d in directions if d is not None and not (isinstance(d, float) and np.isnan(d)) and not np.all(np.isnan(np.asarray(d, dtype=float)))]
    if len(rows) != min(dims, 3) or len(rows) != dims:
        raise IngestError(RejectReason.UNSUPPORTED, "NRRD with non-spatial axes (vector, list or time) is not converted")
    affine = np.eye(4)
    for axis, vec in enumerate(rows):
        vec = np.asarray(vec, dtype=float)
        affine[: len(vec), axis] = vec
    if origin is not None:
        affine[: len(origin), 3] = np.asarray(origin, dtype=float)
    if space in ("left-posterior-superior", "lps"):
        return lps_to_ras(affine)
    if space in ("right-anterior-superior", "ras"):
        return affine
    if space in ("left-anterior-superior", "las"):
        return np.diag([-1.0, 1.0, 1.0, 1.0]) @ affine
    raise IngestError(RejectReason.GEOMETRY, f"NRRD space '{space[:40]}' is not an anatomical space")


def _finish(array: np.ndarray, affine: np.ndarray, corrections: list[str], what: str) -> Volume:
    affine = np.asarray(affine, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise IngestError(RejectReason.GEOMETRY, f"{what} affine is singular or not finite")
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise IngestError(RejectReason.MALFORMED, f"{what} holds {bad} non-finite voxel values")
    if array.dtype.kind not in "iuf" or array.ndim < 2:
        raise IngestError(RejectReason.UNSUPPORTED, f"{what} data of type {array.dtype} and {array.ndim} dimensions")
    if array.ndim == 2:
        array = array[:, :, None]
    array, affine = to_ras_canonical(np.asarray(array), affine)
    return Volume(np.ascontiguousarray(array), affine, corrections=corrections)


def _header_class(head: bytes):
    for order in ("little", "big"):
        size = int.from_bytes(head[:4], order)
        if size == 348:
            return nib.Nifti1Header
        if size == 540:
            return nib.Nifti2Header
    raise IngestError(RejectReason.MALFORMED, "NIfTI sizeof_hdr is neither 348 nor 540")


def _check_size(shape: tuple, itemsize: int, max_bytes: int, what: str) -> None:
    if not shape or any(int(s) < 1 for s in shape):
        raise IngestError(RejectReason.MALFORMED, f"{what} header dimensions {tuple(shape)} are not positive")
    total = itemsize
    for s in shape:
        total *= int(s)
        if total > max_bytes:
            raise IngestError(RejectReason.TOO_LARGE, f"{what} header dimensions {tuple(int(v) for v in shape)} imply more than {max_bytes} bytes")


def _gunzip(data: bytes, limit: int) -> bytes:
    """At most ``limit`` decompressed bytes: a gzip bomb is never inflated past what the header needs."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
            return gz.read(limit)
    except (OSError, EOFError, zlib.error):
        # a truncated stream: return what decompresses, the caller reports the shortfall
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            return d.decompress(data, limit)
        except zlib.error:
            raise IngestError(RejectReason.TRUNCATED, "gzip stream corrupt") from None
