"""What an upload declares, read from its headers alone: shape, bytes per voxel, spacing.

A 265 KB ``.nii.gz`` may declare a legal 1024 x 1024 x 256 volume, and a few compressed
DICOM files may declare thousands of 4096 x 4096 frames: what they *say* decides the memory
a prediction will take, before a voxel is decompressed. :func:`declared_volume` reads only
headers (the first bytes of a gzip stream, DICOM elements up to the pixel data, an NRRD's
text header), so the server can refuse a volume that would not fit its memory budget
before anything is allocated (``medssl.inference.server.memory``).

It never refuses anything itself: what it cannot read gives ``None`` (or is skipped), and
the readers of :mod:`medssl.inference.inputs` then refuse the file with their own reason.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import BinaryIO

import nibabel as nib
import numpy as np
import pydicom

from medssl.io.sources import BadItem, FileFormat, SourceItem, iter_source_items, sniff_format
from medssl.types import PathLike

HEAD_BYTES = 64 << 10
_NIFTI_HEADER = 544
_NRRD_ITEMSIZE = {
    **dict.fromkeys(("int8", "uint8", "signed char", "uchar", "unsigned char", "int8_t"), 1),
    **dict.fromkeys(("short", "int16", "ushort", "uint16", "unsigned short", "short int"), 2),
    **dict.fromkeys(("int", "int32", "uint", "uint32", "unsigned int", "float"), 4),
    **dict.fromkeys(("longlong", "int64", "ulonglong", "uint64", "double", "long long"), 8),
}
_DICOM_TAGS = [
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsAllocated",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
]


@dataclass(frozen=True)
class DeclaredVolume:
    """A volume as its headers describe it.

    shape: spatial sizes ``(X, Y, Z)`` followed by any further axes (frames, channels);
    itemsize: bytes per stored voxel; spacing: mm per axis of ``X, Y, Z`` (``None`` when
    unknown); extra_bytes: bytes a reader holds besides the voxels (a NIfTI's ``vox_offset``).
    """

    shape: tuple[int, ...]
    itemsize: int
    spacing: tuple[float, float, float] | None = None
    extra_bytes: int = 0

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes a reader inflates: header and offset included."""
        return self.voxels * self.itemsize + self.extra_bytes

    def describe(self) -> str:
        """``1024x1024x256 of 1-byte voxels`` (no identifier: sizes only)."""
        return f"{'x'.join(str(s) for s in self.shape)} of {self.itemsize}-byte voxels"


def declared_volume(paths: Sequence[PathLike], max_files: int = 5000) -> DeclaredVolume | None:
    """The volume the files behind ``paths`` declare, or ``None`` when no header says.

    One NIfTI/NRRD file: its header. DICOM files (or a zip of them): every image's rows x
    columns x frames x samples x bits allocated, summed; the shape is the largest plane
    times the number of images. At most ``max_files`` files are looked at.
    """
    planes: list[tuple[int, int, int, int]] = []  # rows, columns, images, bytes per pixel
    spacing: tuple[float, float, float] | None = None
    with ExitStack() as archives:
        opened: dict[str, zipfile.ZipFile] = {}
        for index, item in enumerate(_items(paths)):
            if index >= max_files:
                break
            try:
                with _open(item, opened, archives) as stream:
                    head = stream.read(HEAD_BYTES)
                    fmt = sniff_format(head[:352], item.suffix())
                    if fmt == FileFormat.NIFTI:
                        return _nifti(head)
                    if fmt == FileFormat.NRRD:
                        return _nrrd(head)
                    if fmt != FileFormat.DICOM:
                        continue
                    found = _dicom(stream)
            except Exception:  # noqa: BLE001, S112 - unreadable here: the reader refuses it later
                continue
            if found is not None:
                planes.append(found[0])
                spacing = spacing or found[1]
    if not planes:
        return None
    rows = max(p[0] for p in planes)
    cols = max(p[1] for p in planes)
    images = sum(p[2] for p in planes)
    itemsize = max(p[3] for p in planes)
    return DeclaredVolume((cols, rows, images), itemsize, spacing)


def _items(paths: Sequence[PathLike]) -> Iterator[SourceItem]:
    for path in paths:
        try:
            for entry in iter_source_items(path):
                if not isinstance(entry, BadItem):
                    yield entry
        except (OSError, ValueError):
            continue


def _open(item: SourceItem, opened: dict[str, zipfile.ZipFile], stack: ExitStack) -> BinaryIO:
    """A stream of the item's bytes; each archive is opened once."""
    if item.member is None:
        return open(item.path, "rb")  # the caller's with-block closes it
    if item.path not in opened:
        opened[item.path] = stack.enter_context(zipfile.ZipFile(item.path))
    return opened[item.path].open(item.member)


def _inflate_head(data: bytes, n: int) -> bytes:
    """The first ``n`` bytes a gzip stream inflates to (bounded output: no bomb)."""
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, n)


def _nifti(head: bytes) -> DeclaredVolume | None:
    first = _inflate_head(head, _NIFTI_HEADER) if head[:2] == b"\x1f\x8b" else head
    size_le = int.from_bytes(first[:4], "little")
    size = size_le if size_le in (348, 540) else int.from_bytes(first[:4], "big")
    header_class = nib.Nifti2Header if size == 540 else nib.Nifti1Header
    header = header_class(first[:size], check=False)
    shape = tuple(max(int(s), 0) for s in header.get_data_shape())
    itemsize = int(np.dtype(header.get_data_dtype()).itemsize)
    offset = float(header["vox_offset"])
    extra = int(offset) if math.isfinite(offset) and offset > 0 else size
    zooms = [abs(float(z)) for z in header.get_zooms()[:3]]
    spacing = tuple(zooms) if len(zooms) == 3 and all(0 < z < 1e4 for z in zooms) else None
    return DeclaredVolume(shape, itemsize, spacing, extra)  # type: ignore[arg-type]


def _nrrd(head: bytes) -> DeclaredVolume | None:
    text = head.split(b"\n\n", 1)[0].decode("latin-1")
    fields = {}
    for line in text.splitlines()[1:]:
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[key.strip().lower()] = value.lstrip("=").strip()
    shape = tuple(int(s) for s in fields["sizes"].split())
    itemsize = _NRRD_ITEMSIZE.get(fields.get("type", "").lower(), 8)
    spacing = None
    if "spacings" in fields:
        values = [abs(float(v)) for v in fields["spacings"].split() if v.lower() != "nan"]
        spacing = tuple(values[-3:]) if len(values) >= 3 else None
    return DeclaredVolume(shape, itemsize, spacing, len(text))  # type: ignore[arg-type]


def _dicom(rest: BinaryIO) -> tuple[tuple[int, int, int, int], tuple] | None:
    rest.seek(0)  # files and zip members are seekable; headers may run past HEAD_BYTES
    ds = pydicom.dcmread(rest, force=True, stop_before_pixels=True, specific_tags=_DICOM_TAGS)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        return None
    frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    samples = max(int(ds.get("SamplesPerPixel", 1) or 1), 1)
    bits = max(int(ds.get("BitsAllocated", 16) or 16), 1)
    spacing = None
    pixel = ds.get("PixelSpacing")
    between = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
    if pixel is not None and len(pixel) == 2 and between:
        spacing = (abs(float(pixel[1])), abs(float(pixel[0])), abs(float(between)))
    return (rows, cols, frames, samples * math.ceil(bits / 8)), spacing
