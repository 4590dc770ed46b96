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
from dataclasses import asdict, replace

import numpy as np
from nibabel import orientations as ornt
from pydicom.dataset import Dataset

from medssl.errors import IngestError
from medssl.io.decoder_output import captured_decoder_output
from medssl.io.dicom_frames import FrameParams
from medssl.io.dicom_header import read_header
from medssl.io.dicom_read import lenient_reading, read_dataset_and_frames, transfer_syntax
from medssl.io.dicom_scan import SliceRecord
from medssl.io.dicom_stack import Stack
from medssl.io.geometry_check import check_geometry
from medssl.io.volume import Volume, compact_dtype, lps_to_ras, to_ras_canonical
from medssl.types import GeometryKind, RejectReason

MAX_VOXELS = 2_000_000_000 // 4  # float32 working copy stays under 2 GB per worker
CHANNELS = ("R", "G", "B")


def read_stack(stack: Stack, read_bytes) -> tuple[Volume, Dataset]:
    """Decode and assemble ``stack``; ``read_bytes(item)`` gives a file's bytes.

    Returns the volume and the first image's full header (for de-identification and the
    manifest). The volume has ``corrections`` naming any resampling done, and ``meta``:
    ``geometry`` (a :class:`GeometryKind`), ``frames`` (per-frame parameters of a 4D volume)
    and ``scaling`` (how stored values became the values written).
    """
    first = stack.first
    n_voxels = first.rows * first.cols * len(stack.records) * max(first.mosaic_tiles, 1) * first.samples_per_pixel
    if n_voxels > MAX_VOXELS:
        raise IngestError(RejectReason.TOO_LARGE, f"stack of {n_voxels} voxels exceeds the bound of {MAX_VOXELS}")
    colour = first.samples_per_pixel == 3 and stack.kind == "volume"
    if first.samples_per_pixel != 1 and not colour:
        raise IngestError(RejectReason.UNSUPPORTED, f"colour {'2D images' if stack.kind == 'image2d' else 'mosaics'} (SamplesPerPixel={first.samples_per_pixel}) are not converted")
    meta = {"geometry": GeometryKind.PATIENT, "scaling": first.scaling}
    params = list(stack.frame_params)
    if colour:
        params = [replace(p, channel=c) for p in (params or [FrameParams()]) for c in CHANNELS]
    if params:
        meta["frames"] = [asdict(p) for p in params]
    if stack.kind == "image2d":
        data, header = _decode(stack.records, read_bytes, _Target.plain, (1, stack.frames))
        meta["geometry"] = GeometryKind.PROJECTION if first.ipp is not None and first.iop is not None else GeometryKind.NONE
        return _image2d(stack, data if stack.frames > 1 else data[:, :, 0], meta), header
    if stack.kind == "mosaic":
        data, header = _decode(stack.records, read_bytes, _Target.plain, (1, stack.frames))
        planes = [data[:, :, 0, t] if data.ndim == 4 else data[:, :, 0] for t in range(stack.frames)]
        parts = [_mosaic(rec, plane.T, header) for rec, plane in zip(stack.records, planes)]
        array = parts[0].array if len(parts) == 1 else np.stack([p.array for p in parts], axis=-1)
        return Volume(np.asfortranarray(array), parts[0].affine, meta=meta), header
    layout = (stack.n_slices, stack.frames * (3 if colour else 1))
    affine = _stack_affine(stack)
    check_geometry(affine, "DICOM stack")  # before any pixel is decoded
    if stack.irregularity is None:  # decode straight into RAS+ order: no reorientation copy
        data, header = _decode(stack.records, read_bytes, _Target.oriented(affine), layout)
        ras_affine = affine @ ornt.inv_ornt_aff(_to_ras(affine), (first.cols, first.rows, stack.n_slices))
        return Volume(compact_dtype(data), ras_affine, meta=meta), header
    data, header = _decode(stack.records, read_bytes, _Target.plain, layout)  # [cols, rows, slices(, frames)]
    corrections: list[str] = []
    if stack.tilt_deg > 0:
        data = _unshear(data, stack, np.array(first.iop[:3]), np.array(first.iop[3:]), first.pixel_spacing[1], first.pixel_spacing[0])
        corrections.append(f"{'gantry_tilt' if stack.irregularity != RejectReason.SHEARED else 'shear'}_corrected:{stack.tilt_deg:.2f}deg")
    positions = np.array(stack.positions)
    if len(positions) > 1:
        grid = positions[0] + stack.step * np.round((positions - positions[0]) / stack.step)
        if np.abs(positions - grid).max() > 0.01 or int(round((positions[-1] - positions[0]) / stack.step)) + 1 != len(positions):
            data = _regrid(data, positions, stack.step)
            corrections.append(f"resampled_along_normal:{stack.step:.4g}mm")
    array, ras_affine = to_ras_canonical(compact_dtype(data), affine)
    return Volume(array, ras_affine, meta=meta, corrections=corrections), header


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
    """Where decoded slices go: ``view`` [cols, rows, slices(, frames)] is a window onto ``array``.

    ``plain``: the array itself. ``oriented``: ``array`` is allocated in RAS+ voxel order
    (Fortran, as NIfTI stores it) and ``view`` is it seen through the inverse reorientation
    (flips and transposes are views), so writing slices in acquisition order fills the
    canonical array directly. Frames (a 4th axis) are never reoriented.
    """

    def __init__(self, shape: tuple[int, ...], dtype, transform: np.ndarray | None) -> None:
        self.transform = transform
        if transform is None:
            self.array = self.view = np.empty(shape, dtype=dtype, order="F")
        else:
            ras_shape = tuple(shape[int(axis)] for axis in np.argsort(transform[:, 0])) + tuple(shape[3:])
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


def _decode(records: tuple[SliceRecord, ...], read_bytes, target, layout: tuple[int, int]) -> tuple[np.ndarray, Dataset]:
    """Pixel values with the rescale applied, written slice by slice through ``target``.

    ``layout = (slices, frames)``: record ``i`` is slice ``i % slices`` of frame ``i // slices``
    (a colour record fills three consecutive frames, R, G, B). ``target(shape, dtype)`` makes
    a :class:`_Target` of shape [cols, rows, slices] or [cols, rows, slices, frames]; the
    returned array is the target's (plain or already RAS+). Each file is read once, however
    many frames it holds.
    """
    n_slices, n_frames = layout
    channels = records[0].samples_per_pixel
    by_item: dict = defaultdict(list)
    for index, rec in enumerate(records):
        by_item[rec.item].append((index, rec))
    dest: _Target | None = None
    header = None
    for item, members in by_item.items():
        first = members[0][1]
        data = read_bytes(item)
        if header is not None and first.native_pixels is not None and len(members) == 1:
            frames = _native(data, first)  # plain pixels after the first file: no header parse
        else:
            fast = read_header(data) if first.native_pixels is not None or first.frames_span is not None else None
            if fast is not None and fast.pixel_value_offset is not None:
                ds = fast.to_dataset()  # elements stay raw until read
            else:
                ds, _, _ = read_dataset_and_frames(data, stop_before_pixels=False, span=first.frames_span)  # groups: read at scan
            frames = _pixels(ds, first)
            header = ds if header is None else header  # the first record's file comes first
            del ds
        for index, rec in members:
            lo, hi = _stored_range(rec)
            raw = frames[rec.frame] if rec.frame is not None else frames
            expected = (rec.rows, rec.cols) if channels == 1 else (rec.rows, rec.cols, channels)
            if raw.shape != expected:
                raise IngestError(RejectReason.MALFORMED, f"decoded image of shape {raw.shape} for a header of {rec.rows}x{rec.cols}")
            dtype = _output_dtype(rec)
            if dest is None:
                shape = (rec.cols, rec.rows, n_slices) + ((n_frames,) if n_frames > 1 else ())
                dest = target(shape, dtype)
            elif not np.can_cast(dtype, dest.array.dtype, casting="safe"):
                dest = dest.widen(np.result_type(dest.array.dtype, dtype))
            z, t = index % n_slices, index // n_slices
            for c in range(channels):
                plane = raw if channels == 1 else raw[..., c]
                out = dest.view[:, :, z, t * channels + c] if n_frames > 1 else dest.view[:, :, z]
                if rec.slope == 1:
                    np.add(plane.T, rec.intercept, out=out, casting="unsafe")  # exact: the range was checked
                else:
                    np.multiply(plane.T, np.float32(rec.slope), out=out, casting="unsafe")
                    out += np.float32(rec.intercept)
                if rec.photometric == "MONOCHROME1":  # minimum is white: mirror the stored range (not the content)
                    np.subtract(rec.slope * (lo + hi) + 2 * rec.intercept, out, out=out, casting="unsafe")
        del data, frames
    return dest.array, header


def _stored_range(rec: SliceRecord) -> tuple[int, int]:
    """Smallest and largest stored value BitsStored and PixelRepresentation allow."""
    bits = rec.bits_stored
    if rec.signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _native(data: bytes, rec: SliceRecord) -> np.ndarray:
    """[rows, cols] straight from the bytes (scan found the value at ``rec.native_pixels``);
    bits above BitsStored are masked and signed values sign-extended, as pydicom does."""
    offset, count = rec.native_pixels, rec.rows * rec.cols
    if data[offset - 12 : offset - 8] != b"\xe0\x7f\x10\x00" and data[offset - 8 : offset - 4] != b"\xe0\x7f\x10\x00":
        raise IngestError(RejectReason.MALFORMED, "the file changed between reading its header and its pixels")
    if offset + count * rec.bits_allocated // 8 > len(data):
        raise IngestError(RejectReason.TRUNCATED, "pixel data shorter than the header promises")
    kind = ("<i" if rec.signed else "<u") + str(rec.bits_allocated // 8)
    raw = np.frombuffer(data, dtype=kind, count=count, offset=offset).reshape(rec.rows, rec.cols)
    spare = rec.bits_allocated - rec.bits_stored
    if spare > 0:
        unsigned = raw.view(raw.dtype.str.replace("i", "u"))
        raw = unsigned & ((1 << rec.bits_stored) - 1)
        if rec.signed:  # sign-extend from the top stored bit
            raw = (raw.astype(np.int32) ^ (1 << (rec.bits_stored - 1))) - (1 << (rec.bits_stored - 1))
            raw = raw.astype(kind)
    return raw


def _output_dtype(rec: SliceRecord) -> np.dtype:
    """Smallest type holding every value the modality LUT can produce (HU for CT), exactly.

    Integers stay integers when the rescale is an integer shift: the stored range (from
    BitsStored and PixelRepresentation) plus the intercept decides the width.
    """
    if rec.slope != 1 or not float(rec.intercept).is_integer():
        return np.dtype(np.float32)
    lo, hi = _stored_range(rec)
    lo, hi = lo + int(rec.intercept), hi + int(rec.intercept)
    for dtype in (np.uint8, np.int16, np.uint16, np.int32):
        if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.float32) if max(abs(lo), abs(hi)) < 1 << 24 else np.dtype(np.float64)


def _pixels(ds: Dataset, rec: SliceRecord) -> np.ndarray:
    """Decoded pixel data; native data is length-checked against the header first.

    A compressed frame decodes with the decoders' own output captured
    (:mod:`~medssl.io.decoder_output`): their tracebacks and panics become the reason.
    """
    if "PixelData" not in ds:
        kind = "float " if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds) else ""
        raise IngestError(RejectReason.NO_PIXELS if not kind else RejectReason.UNSUPPORTED, f"no {kind}pixel data to convert")
    tsyntax = transfer_syntax(ds)
    compressed = tsyntax is not None and tsyntax.is_compressed
    if not compressed:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16))
        expected = (rec.rows * rec.cols * frames * rec.samples_per_pixel * bits + 7) // 8
        have = len(ds.PixelData or b"")  # an element of length 0 reads as None
        if have < expected:
            raise IngestError(RejectReason.TRUNCATED, f"pixel data holds {have} of {expected} bytes the header promises")
    said = None
    try:
        with lenient_reading():
            if not compressed:
                return ds.pixel_array
            with captured_decoder_output() as said:
                return ds.pixel_array
    except (IngestError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - decoders raise anything (a Rust panic is a BaseException)
        code = RejectReason.DECODE if compressed else RejectReason.MALFORMED
        detail = f": {said.summary}" if said is not None and said.summary else ""
        raise IngestError(code, f"pixel data does not decode ({type(exc).__name__}){detail}") from None


def _unshear(data: np.ndarray, stack: Stack, row_cos, col_cos, dx: float, dy: float) -> np.ndarray:
    """Shift each slice (of every frame) in-plane so its origin lies on the normal through slice 0."""
    from scipy import ndimage

    ipp0 = np.array(stack.first.ipp)
    normal = np.array(stack.normal)
    fill = float(data.min())
    out = np.empty(data.shape, dtype=np.float32, order="F")
    for z, rec in enumerate(stack.frame(0)):
        delta = np.array(rec.ipp) - ipp0
        perp = delta - np.dot(delta, normal) * normal
        shift = (np.dot(perp, row_cos) / dx, np.dot(perp, col_cos) / dy)  # voxels along (cols, rows)
        planes = data[:, :, z].reshape(data.shape[0], data.shape[1], -1)
        for t in range(planes.shape[2]):
            shifted = ndimage.shift(planes[:, :, t].astype(np.float32), shift, order=1, mode="constant", cval=fill)
            if data.ndim == 4:
                out[:, :, z, t] = shifted
            else:
                out[:, :, z] = shifted
    return _like(out, data.dtype)


def _regrid(data: np.ndarray, positions: np.ndarray, step: float) -> np.ndarray:
    """Linear interpolation along the slice axis onto ``positions[0] + m * step`` (every frame alike)."""
    count = int(round((positions[-1] - positions[0]) / step)) + 1
    target = positions[0] + step * np.arange(count)
    upper = np.clip(np.searchsorted(positions, target, side="right"), 1, len(positions) - 1)
    lower = upper - 1
    span = positions[upper] - positions[lower]
    w = np.clip((target - positions[lower]) / np.where(span > 0, span, 1), 0, 1).astype(np.float32)
    w[np.abs(w) < 1e-6], w[np.abs(w - 1) < 1e-6] = 0, 1  # acquired slices come back exactly
    w = w.reshape((-1,) + (1,) * (data.ndim - 3))
    src = data.astype(np.float32, copy=False)
    return _like(src[:, :, lower] * (1 - w) + src[:, :, upper] * w, data.dtype)


def _like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Interpolated values in the input's type: integers (HU) are rounded, not widened to float."""
    return np.rint(values).astype(dtype) if np.issubdtype(dtype, np.integer) else values


def _image2d(stack: Stack, pixels: np.ndarray, meta: dict) -> Volume:
    """A 2D image, ``pixels`` [cols, rows] (a cine: [cols, rows, 1, frames]), in display order:
    no patient frame is claimed.

    ``meta["geometry"]`` says why: a projection (localizer, scout, radiograph) or an image
    without ImagePositionPatient/ImageOrientationPatient. The affine holds the pixel
    spacing only (1 mm where the header gives none: ``corrections`` says so).
    """
    spacing = stack.first.pixel_spacing
    corrections = [] if spacing else ["no_pixel_spacing:1mm"]
    spacing = spacing or (1.0, 1.0)
    affine = np.diag([spacing[1], spacing[0], 1.0, 1.0])
    return Volume(compact_dtype(np.asfortranarray(pixels)), affine, meta=meta, corrections=corrections)


def _mosaic(rec: SliceRecord, pixels: np.ndarray, header: Dataset) -> Volume:
    """Unpack one Siemens mosaic, ``pixels`` [rows, cols]: tiles row-major in an m x m grid of slices."""
    if rec.ipp is None or rec.iop is None or rec.pixel_spacing is None:
        raise IngestError(RejectReason.GEOMETRY, "mosaic image without ImagePositionPatient, ImageOrientationPatient or PixelSpacing")
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
    step = float(rec.spacing_between or rec.slice_thickness or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = row_cos * dx
    affine[:3, 1] = col_cos * dy
    affine[:3, 2] = np.array(rec.mosaic_normal) * step
    affine[:3, 3] = origin
    array, affine = to_ras_canonical(compact_dtype(data), lps_to_ras(affine))
    return Volume(array, affine)
