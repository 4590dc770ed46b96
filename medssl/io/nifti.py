"""NIfTI-1/2 and NRRD readers that check the header before allocating anything.

A header can claim any size ("header bomb"); dimensions, data type, ``vox_offset`` and the
bytes they imply together (what a ``.nii.gz`` inflates to) are validated against
``max_bytes`` first, then only that many bytes are decompressed. Geometry must be real
(:func:`~medssl.io.geometry_check.check_geometry`: finite, spacing in a sane range), and
non-finite voxel values are refused because they would poison training.
"""

from __future__ import annotations

import bz2
import gzip
import io
import zlib

import nibabel as nib
import numpy as np

from medssl.errors import IngestError
from medssl.io.geometry_check import check_geometry
from medssl.io.volume import Volume, compact_dtype, lps_to_ras, to_ras_canonical
from medssl.types import RejectReason

MAX_VOLUME_BYTES = 4 << 30
MAX_HEADER_BYTES = 64 << 20  # header + extensions before vox_offset; real ones are kilobytes
QFORM_SFORM_TOLERANCE_MM = 0.01

# NRRD type names (teem's spellings) -> bytes per sample
_NRRD_ITEMSIZE = {
    **dict.fromkeys(["signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"], 1),
    **dict.fromkeys(["short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"], 2),
    **dict.fromkeys(["int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"], 4),
    **dict.fromkeys(["longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"], 8),
}


def read_nifti(data: bytes, *, max_bytes: int = MAX_VOLUME_BYTES) -> Volume:
    """A NIfTI-1/2 file's bytes (``.nii`` or ``.nii.gz``) as a canonical volume.

    Header extensions of any size are skipped, not parsed (ingest drops them). Scaled data
    follow the one dtype rule (:func:`_scaled`). ``meta`` says which affine was used:
    ``qform_code``, ``sform_code``, ``affine_source`` (``sform | qform | pixdim``) and
    ``affine_code`` (the code of the affine used, 0 for pixdim); a qform and an sform that
    disagree add the correction ``qform_sform_differ:used_sform:<max mm>mm``.
    """
    gzipped = data[:2] == b"\x1f\x8b"
    first = _gunzip(data, 544) if gzipped else data[:544]
    if len(first) < 348:
        raise IngestError(RejectReason.TRUNCATED, f"NIfTI header holds {len(first)} of 348 bytes")
    header_class, header_size = _header_class(first)
    if len(first) < header_size:
        raise IngestError(RejectReason.TRUNCATED, f"NIfTI-2 header holds {len(first)} of {header_size} bytes")
    try:  # the fixed header only: extensions are bounded by vox_offset, read with the data
        header = header_class(first[:header_size], check=True)
    except Exception as exc:  # noqa: BLE001 - nibabel raises HeaderDataError and friends
        raise IngestError(RejectReason.MALFORMED, f"NIfTI header invalid ({type(exc).__name__})") from None
    _check_layout(header)
    shape = tuple(int(s) for s in header.get_data_shape())
    try:
        dtype = np.dtype(header.get_data_dtype())
    except Exception:  # noqa: BLE001
        raise IngestError(RejectReason.UNSUPPORTED, "NIfTI data type not supported") from None
    if dtype.kind not in "iuf":
        raise IngestError(RejectReason.UNSUPPORTED, f"NIfTI data type {dtype} (complex or RGB) is not converted")
    _check_size(shape, dtype.itemsize, max_bytes, "NIfTI")
    offset = _data_offset(header, header_size, None if gzipped else len(data))
    needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if needed > max_bytes:  # extensions count: a bomb can hide its bulk before the voxels
        raise IngestError(RejectReason.TOO_LARGE, f"NIfTI vox_offset {offset} and data of shape {shape} imply {needed} bytes, more than the bound of {max_bytes}")
    affine, meta, corrections = _nifti_geometry(header, shape)
    check_geometry(affine, "NIfTI")  # before a byte of data is inflated
    raw = _gunzip(data, needed) if gzipped else memoryview(data)[:needed]
    if len(raw) < needed:
        raise IngestError(RejectReason.TRUNCATED, f"NIfTI data holds {len(raw)} of {needed} bytes")
    stored = np.ndarray(shape, dtype=dtype, buffer=raw, offset=offset, order="F")
    return _finish(_squeeze_time(_scaled(stored, header)), affine, corrections, "NIfTI", meta)


def _check_layout(header) -> None:
    """Refuse what is not one image in one file: header/image pairs and CIFTI matrices."""
    magic = bytes(header["magic"].item())[:3]
    if magic in (b"ni1", b"ni2"):
        raise IngestError(RejectReason.UNSUPPORTED, "NIfTI pair header: the voxels are in a separate .img file")
    intent = int(header["intent_code"])
    if 3000 <= intent < 3100:
        raise IngestError(RejectReason.UNSUPPORTED, f"CIFTI-2 file (intent code {intent}) holds a matrix, not a volume")
    shape = tuple(int(s) for s in header.get_data_shape())
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 4:
        raise IngestError(RejectReason.UNSUPPORTED, f"NIfTI of shape {shape}: more than 4 dimensions (vector or tensor data) is not converted")


def _data_offset(header, header_size: int, file_size: int | None) -> int:
    """``vox_offset`` checked to be a plausible end of header + extensions."""
    value = float(header["vox_offset"])
    if not np.isfinite(value) or value != int(value) or value < header_size:
        raise IngestError(RejectReason.MALFORMED, f"NIfTI vox_offset {value:g} is not a byte offset at or past the {header_size}-byte header")
    offset = int(value)
    if offset > MAX_HEADER_BYTES:
        raise IngestError(RejectReason.MALFORMED, f"NIfTI vox_offset {offset} puts more than {MAX_HEADER_BYTES >> 20} MiB of extensions before the voxels")
    if file_size is not None and offset > file_size:
        raise IngestError(RejectReason.TRUNCATED, f"NIfTI vox_offset {offset} lies past the end of the {file_size}-byte file")
    return offset


def _scaled(stored: np.ndarray, header) -> np.ndarray:
    """``stored * scl_slope + scl_inter`` under the one dtype rule shared with DICOM.

    Integral results take the smallest exact integer type (integer arithmetic when stored
    values, slope and intercept are all integers), everything else float32; float64 is only
    touched when the file itself stores float64.
    """
    try:
        slope, inter = header.get_slope_inter()
    except Exception:  # noqa: BLE001 - a valid slope with a non-finite intercept
        raise IngestError(RejectReason.MALFORMED, "NIfTI scl_inter is not finite") from None
    slope = 1.0 if slope is None else float(slope)
    inter = 0.0 if inter is None else float(inter)
    if slope == 1.0 and inter == 0.0:
        return compact_dtype(stored)
    if stored.dtype.kind in "iu" and slope.is_integer() and inter.is_integer() and stored.size:
        lo, hi = int(stored.min()), int(stored.max())
        bounds = (lo, hi, lo * int(slope), hi * int(slope), lo * int(slope) + int(inter), hi * int(slope) + int(inter))
        work = next((t for t in (np.int16, np.int32, np.int64) if np.iinfo(t).min <= min(bounds) and max(bounds) <= np.iinfo(t).max), None)
        if work is not None:
            out = stored.astype(work)
            out *= work(int(slope))
            out += work(int(inter))
            return compact_dtype(out)
    wide = np.float64 if stored.dtype.itemsize > 4 and stored.dtype.kind == "f" else np.float32
    out = stored.astype(wide)
    out *= wide(slope)
    out += wide(inter)
    return compact_dtype(out)


def _squeeze_time(array: np.ndarray) -> np.ndarray:
    """A 4D file with one volume (``[X, Y, Z, 1]``) is a 3D volume."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def _nifti_geometry(header, shape: tuple[int, ...]) -> tuple[np.ndarray, dict, list[str]]:
    """The affine nibabel's ``img.affine`` gives (sform, else qform, else pixdim), its provenance and corrections."""
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    corrections: list[str] = []
    try:
        qform = header.get_qform() if qcode else None
    except Exception:  # noqa: BLE001 - an impossible quaternion or qfac
        if not scode:
            raise IngestError(RejectReason.GEOMETRY, "NIfTI qform (quaternion, qfac or pixdim) is invalid") from None
        qform = None
        corrections.append("qform_invalid:used_sform")
    if scode:
        affine, source, code = header.get_sform(), "sform", scode
    elif qcode:
        affine, source, code = qform, "qform", qcode
    else:
        affine, source, code = header.get_base_affine(), "pixdim", 0
        corrections.append("no_qform_sform:pixdim_affine")
    meta = {"qform_code": qcode, "sform_code": scode, "affine_source": source, "affine_code": code}
    if scode and qform is not None:
        differ = _affine_disagreement(qform, affine, shape[:3])
        meta["qform_sform_differ_mm"] = round(differ, 4)
        if differ > QFORM_SFORM_TOLERANCE_MM:
            corrections.append(f"qform_sform_differ:used_sform:{differ:.3g}mm")
    return affine, meta, corrections


def _affine_disagreement(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (mm) between where ``a`` and ``b`` put a corner voxel or a voxel step."""
    extent = [max(int(n) - 1, 0) for n in shape] + [0] * (3 - len(shape))
    corners = np.array([[i, j, k, 1] for i in (0, extent[0]) for j in (0, extent[1]) for k in (0, extent[2])], dtype=float)
    delta = np.asarray(a, float) - np.asarray(b, float)
    by_corner = np.linalg.norm(corners @ delta[:3].T, axis=1).max()
    by_column = np.linalg.norm(delta[:3, :3], axis=0).max()
    return float(max(by_corner, by_column))


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
    check_geometry(affine, "NRRD")
    encoding = str(header.get("encoding", "raw")).strip().lower()
    if encoding in ("gzip", "gz", "bzip2", "bz2"):  # pynrrd would inflate the whole stream, however large
        stream, header = _inflated(stream, encoding, max_bytes), {**header, "encoding": "raw"}
    try:
        array = nrrd.read_data(header, stream, index_order="F")
    except Exception as exc:  # noqa: BLE001
        raise IngestError(RejectReason.TRUNCATED if isinstance(exc, (EOFError, zlib.error)) else RejectReason.MALFORMED, f"NRRD data unreadable ({type(exc).__name__})") from None
    if tuple(array.shape) != tuple(sizes):
        raise IngestError(RejectReason.TRUNCATED, f"NRRD data of shape {array.shape} for sizes {sizes}")
    return _finish(array, affine, [], "NRRD")


def _inflated(stream: io.BytesIO, encoding: str, max_bytes: int) -> io.BytesIO:
    """A compressed NRRD's data, inflated to at most ``max_bytes``: past that it is a bomb."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding in ("gzip", "gz") else bz2.BZ2Decompressor()
    try:
        data = inflater.decompress(stream.read(), max_bytes + 1)
    except (zlib.error, OSError, EOFError, ValueError):
        raise IngestError(RejectReason.TRUNCATED, f"NRRD {encoding} stream corrupt") from None
    if len(data) > max_bytes:
        raise IngestError(RejectReason.TOO_LARGE, f"NRRD {encoding} data inflates past the bound of {max_bytes} bytes")
    return io.BytesIO(data)


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


def _finish(array: np.ndarray, affine: np.ndarray, corrections: list[str], what: str, meta: dict | None = None) -> Volume:
    affine = np.asarray(affine, dtype=float)
    check_geometry(affine, what)
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise IngestError(RejectReason.MALFORMED, f"{what} holds {bad} non-finite voxel values")
    if array.dtype.kind not in "iuf" or array.ndim < 2:
        raise IngestError(RejectReason.UNSUPPORTED, f"{what} data of type {array.dtype} and {array.ndim} dimensions")
    if array.ndim == 2:
        array = array[:, :, None]
    array, affine = to_ras_canonical(np.asarray(array), affine)  # 4D: the first three axes, time untouched
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # a view of the file's bytes
        array = array.copy()
    return Volume(array, affine, meta=dict(meta or {}), corrections=corrections)


def _header_class(head: bytes) -> tuple[type, int]:
    """nibabel's header class and the fixed header size, from ``sizeof_hdr`` in either byte order."""
    for order in ("little", "big"):
        size = int.from_bytes(head[:4], order)
        if size == 348:
            return nib.Nifti1Header, 348
        if size == 540:
            return nib.Nifti2Header, 540
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
