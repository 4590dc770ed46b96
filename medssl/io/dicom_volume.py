"""Second pass: decode the pixels of one stack and build its canonical :class:`Volume`.

Geometry (DICOM PS3.3 C.7.6.2.1.1): the world position (LPS, mm) of the pixel in column
c and row r of a slice is ``IPP + c * dx * row_cosine + r * dy * column_cosine`` where
``PixelSpacing = [dy, dx]`` (between rows, between columns). Voxel axes of the assembled
array are (column, row, slice-along-normal), so the LPS affine has columns
``[dx * row_cosine, dy * column_cosine, step * normal, IPP_first]``; it is then turned into
RAS and the voxels into RAS+ order (``volume.to_ras_canonical``).

Irregular stacks, when the policy allows, are resampled onto the geometry a regular
acquisition would have had: a gantry-tilted stack is un-sheared slice by slice (each
slice shifted in-plane by its offset from the normal line through the first slice, so
every voxel keeps its true world position); missing or uneven slices are linearly
interpolated onto a uniform grid along the normal.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from nibabel import orientations as ornt
from pydicom.dataset import Dataset

from medssl.errors import IngestError
from medssl.io.dicom_scan import SliceRecord, read_dataset, strict_reading
from medssl.io.dicom_stack import Stack
from medssl.io.volume import Volume, compact_dtype, lps_to_ras, to_ras_canonical
from medssl.types import RejectReason

MAX_VOXELS = 2_000_000_000 // 4  # float32 working copy stays under 2 GB per worker


def read_stack(stack: Stack, read_bytes) -> tuple[Volume, Dataset]:
    """Decode and assemble ``stack``; ``read_bytes(item)`` gives a file's bytes.

    Returns the volume and the first image's full header (for de-identification and the
    manifest). The volume has ``corrections`` naming any resampling done.
    """
    first = stack.first
    n_voxels = first.rows * first.cols * max(len(stack.records), first.mosaic_tiles or 1)
    if n_voxels > MAX_VOXELS:
        raise IngestError(RejectReason.TOO_LARGE, f"stack of {n_voxels} voxels exceeds the bound of {MAX_VOXELS}")
    if first.samples_per_pixel != 1:
        raise IngestError(RejectReason.UNSUPPORTED, f"colour images (SamplesPerPixel={first.samples_per_pixel}) are not converted")
    if stack.kind != "volume":
        data, header = _decode(stack.records, read_bytes, _Target.plain)
        pixels = data[:, :, 0]  # [cols, rows]
        return (_image2d(stack, pixels) if stack.kind == "image2d" else _mosaic(stack, pixels.T, header)), header
    affine = _stack_affine(stack)
    if stack.irregularity is None:  # decode straight into RAS+ order: no reorientation copy
        data, header = _decode(stack.records, read_bytes, _Target.oriented(affine))
        ras_affine = affine @ ornt.inv_ornt_aff(_to_ras(affine), (first.cols, first.rows, len(stack.records)))
        return Volume(compact_dtype(data), ras_affine), header
    data, header = _decode(stack.records, read_bytes, _Target.plain)  # [cols, rows, slices]
    corrections: list[str] = []
    if stack.tilt_deg > 0:
        data = _unshear(data, stack, np.array(first.iop[:3]), np.array(first.iop[3:]), first.pixel_spacing[1], first.pixel_spacing[0])
        corrections.append(f"gantry_tilt_corrected:{stack.tilt_deg:.2f}deg")
    positions = np.array(stack.positions)
    steps = np.diff(positions) if len(positions) > 1 else np.array([stack.step])
    if np.any(np.abs(steps - stack.step) > max(0.02 * stack.step, 0.01)):
        data = _regrid(data, positions, stack.step)
        corrections.append(f"resampled_along_normal:{stack.step:.4g}mm")
    array, ras_affine = to_ras_canonical(compact_dtype(data), affine)
    return Volume(array, ras_affine, corrections=corrections), header


def _stack_affine(stack: Stack) -> np.ndarray:
    """Voxel (column, row, slice) -> RAS world (mm) of a sorted stack on its regular grid."""
    first = stack.first
    dy, dx = first.pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = np.array(first.iop[:3]) * dx
    affine[:3, 1] = np.array(first.iop[3:]) * dy
    affine[:3, 2] = np.array(stack.normal) * stack.step
    affine[:3, 3] = first.ipp
    return lps_to_ras(affine)


def _to_ras(affine: np.ndarray) -> np.ndarray:
    return ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(("R", "A", "S")))


def _inverse(transform: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``transform`` (axis i -> j becomes j -> i)."""
    inverse = np.empty_like(transform)
    for axis, (target, flip) in enumerate(transform):
        inverse[int(target)] = (axis, flip)
    return inverse


class _Target:
    """Where decoded slices go: ``view`` [cols, rows, slices] is a window onto ``array``.

    ``plain``: the array itself. ``oriented``: ``array`` is allocated in RAS+ voxel order
    (Fortran, as NIfTI stores it) and ``view`` is it seen through the inverse reorientation
    (flips and transposes are views), so writing slices in acquisition order fills the
    canonical array directly.
    """

    def __init__(self, shape: tuple[int, int, int], dtype, transform: np.ndarray | None) -> None:
        self.transform = transform
        if transform is None:
            self.array = self.view = np.empty(shape, dtype=dtype, order="F")
        else:
            ras_shape = tuple(shape[int(axis)] for axis in np.argsort(transform[:, 0]))
            self.array = np.empty(ras_shape, dtype=dtype, order="F")
            self.view = ornt.apply_orientation(self.array, _inverse(transform))  # flips + transpose: a view

    @staticmethod
    def plain(shape, dtype) -> _Target:
        return _Target(shape, dtype, None)

    @staticmethod
    def oriented(affine: np.ndarray):
        transform = _to_ras(affine)
        return lambda shape, dtype: _Target(shape, dtype, transform)

    def widen(self, dtype) -> _Target:
        """The same contents in a wider type (a later slice needs more range)."""
        wider = _Target(self.view.shape, dtype, self.transform)
        wider.array[...] = self.array
        return wider


def _decode(records: tuple[SliceRecord, ...], read_bytes, target) -> tuple[np.ndarray, Dataset]:
    """Pixel values with the rescale applied, written slice by slice through ``target``.

    ``target(shape, dtype)`` makes a :class:`_Target`; slice k goes to ``view[:, :, k]``
    ([cols, rows]), and the returned array is the target's (plain or already RAS+).
    Each file is read once, however many frames it holds.
    """
    by_item: dict = defaultdict(list)
    for index, rec in enumerate(records):
        by_item[rec.item].append((index, rec))
    dest: _Target | None = None
    header = None
    for item, members in by_item.items():
        ds = read_dataset(read_bytes(item), stop_before_pixels=False)
        frames = _pixels(ds, members[0][1])
        header = ds if header is None else header  # the first record's file comes first
        for index, rec in members:
            raw = frames[rec.frame] if rec.frame is not None else frames
            if raw.ndim != 2 or raw.shape != (rec.rows, rec.cols):
                raise IngestError(RejectReason.MALFORMED, f"decoded image of shape {raw.shape} for a header of {rec.rows}x{rec.cols}")
            dtype = _output_dtype(ds, rec)
            if dest is None:
                dest = target((rec.cols, rec.rows, len(records)), dtype)
            elif not np.can_cast(dtype, dest.array.dtype, casting="safe"):
                dest = dest.widen(np.result_type(dest.array.dtype, dtype))
            out = dest.view[:, :, index]
            if rec.slope == 1:
                np.add(raw.T, rec.intercept, out=out, casting="unsafe")  # exact: the range was checked
            else:
                np.multiply(raw.T, np.float32(rec.slope), out=out, casting="unsafe")
                out += np.float32(rec.intercept)
            if rec.photometric == "MONOCHROME1":  # display-inverted: make high values bright
                out[...] = out.max() + out.min() - out
        del ds, frames
    return dest.array, header


def _output_dtype(ds: Dataset, rec: SliceRecord) -> np.dtype:
    """Smallest type holding every value the modality LUT can produce (HU for CT), exactly.

    Integers stay integers when the rescale is an integer shift: the stored range (from
    BitsStored and PixelRepresentation) plus the intercept decides the width.
    """
    if rec.slope != 1 or not float(rec.intercept).is_integer():
        return np.dtype(np.float32)
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    lo, hi = lo + int(rec.intercept), hi + int(rec.intercept)
    for dtype in (np.uint8, np.int16, np.uint16, np.int32):
        if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.float64)


def _pixels(ds: Dataset, rec: SliceRecord) -> np.ndarray:
    """Decoded pixel data; native data is length-checked against the header first."""
    if "PixelData" not in ds:
        kind = "float " if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds) else ""
        raise IngestError(RejectReason.NO_PIXELS if not kind else RejectReason.UNSUPPORTED, f"no {kind}pixel data to convert")
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None or not tsyntax.is_compressed:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16))
        expected = (rec.rows * rec.cols * frames * rec.samples_per_pixel * bits + 7) // 8
        have = len(ds.PixelData)
        if have < expected:
            raise IngestError(RejectReason.TRUNCATED, f"pixel data holds {have} of {expected} bytes the header promises")
    try:
        with strict_reading():
            return ds.pixel_array
    except (IngestError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - decoders raise anything (a Rust panic is a BaseException); texts may quote values
        code = RejectReason.DECODE if tsyntax is not None and tsyntax.is_compressed else RejectReason.MALFORMED
        raise IngestError(code, f"pixel data does not decode ({type(exc).__name__})") from None


def _unshear(data: np.ndarray, stack: Stack, row_cos, col_cos, dx: float, dy: float) -> np.ndarray:
    """Shift each slice in-plane so its origin lies on the normal through slice 0."""
    from scipy import ndimage

    ipp0 = np.array(stack.first.ipp)
    normal = np.array(stack.normal)
    fill = float(data.min())
    out = np.empty(data.shape, dtype=np.float32)
    for k, rec in enumerate(stack.records):
        delta = np.array(rec.ipp) - ipp0
        perp = delta - np.dot(delta, normal) * normal
        shift = (np.dot(perp, row_cos) / dx, np.dot(perp, col_cos) / dy)  # voxels along (cols, rows)
        out[:, :, k] = ndimage.shift(data[:, :, k].astype(np.float32), shift, order=1, mode="constant", cval=fill)
    return _like(out, data.dtype)


def _regrid(data: np.ndarray, positions: np.ndarray, step: float) -> np.ndarray:
    """Linear interpolation along the slice axis onto ``positions[0] + m * step``."""
    count = int(round((positions[-1] - positions[0]) / step)) + 1
    target = positions[0] + step * np.arange(count)
    upper = np.clip(np.searchsorted(positions, target, side="right"), 1, len(positions) - 1)
    lower = upper - 1
    span = positions[upper] - positions[lower]
    w = np.clip((target - positions[lower]) / np.where(span > 0, span, 1), 0, 1).astype(np.float32)
    w[np.abs(w) < 1e-6], w[np.abs(w - 1) < 1e-6] = 0, 1  # acquired slices come back exactly
    src = data.astype(np.float32, copy=False)
    return _like(src[:, :, lower] * (1 - w) + src[:, :, upper] * w, data.dtype)


def _like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Interpolated values in the input's type: integers (HU) are rounded, not widened to float."""
    return np.rint(values).astype(dtype) if np.issubdtype(dtype, np.integer) else values


def _image2d(stack: Stack, pixels: np.ndarray) -> Volume:
    """A projection image, ``pixels`` [cols, rows]: display order, no patient frame."""
    spacing = stack.first.pixel_spacing or (1.0, 1.0)
    affine = np.diag([spacing[1], spacing[0], 1.0, 1.0])
    return Volume(compact_dtype(np.asfortranarray(pixels)), affine)


def _mosaic(stack: Stack, pixels: np.ndarray, header: Dataset) -> Volume:
    """Unpack a Siemens mosaic: tiles row-major in an m x m grid of slices."""
    rec = stack.first
    if rec.ipp is None or rec.iop is None or rec.pixel_spacing is None:
        raise IngestError(RejectReason.GEOMETRY, "mosaic image without position, orientation or spacing")
    n = rec.mosaic_tiles
    m = int(np.ceil(np.sqrt(n)))
    tr, tc = rec.rows // m, rec.cols // m  # scanners may pad the mosaic: floor, as dcm2niix does
    if tr == 0 or tc == 0:
        raise IngestError(RejectReason.GEOMETRY, f"mosaic of {rec.rows}x{rec.cols} cannot hold {n} tiles")
    tiles = [pixels[(k // m) * tr : (k // m + 1) * tr, (k % m) * tc : (k % m + 1) * tc] for k in range(n)]
    data = np.ascontiguousarray(np.stack(tiles, axis=-1).transpose(1, 0, 2))  # [cols, rows, slices]
    row_cos, col_cos = np.array(rec.iop[:3]), np.array(rec.iop[3:])
    dy, dx = rec.pixel_spacing
    # IPP of a mosaic is that of the whole tiled image's corner; move it to tile 0's corner
    # (the shift uses the exact mosaic fraction rows / m, as the scanner computed it)
    origin = np.array(rec.ipp) + row_cos * dx * (rec.cols - rec.cols / m) / 2 + col_cos * dy * (rec.rows - rec.rows / m) / 2
    step = float(header.get("SpacingBetweenSlices") or header.get("SliceThickness") or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = row_cos * dx
    affine[:3, 1] = col_cos * dy
    affine[:3, 2] = np.array(rec.mosaic_normal) * step
    affine[:3, 3] = origin
    array, affine = to_ras_canonical(compact_dtype(data), lps_to_ras(affine))
    return Volume(array, affine)
