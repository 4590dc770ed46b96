"""A classic file's header walked here; pydicom converts an element only when it is read.

Scanning a series reads a few dozen elements of each file, but ``pydicom.dcmread`` builds
all of them (a GE or Philips header holds hundreds with its private groups), ≈2 ms a file:
most of ingest's time on a series of many single-frame files. :func:`read_header` walks the
top-level elements of an uncompressed little-endian file (explicit or implicit VR), noting
only where each lies; :class:`Header` turns one into pydicom's ``RawDataElement`` and
converts it with pydicom's own ``convert_raw_data_element`` (VR lookup, private
dictionaries, the file's character set) on first access. Every value is therefore exactly
what ``dcmread`` gives, so pseudonyms made from them do not depend on the path
(``tests/io/test_dicom_header.py`` compares both on every corpus file).

Files it does not take return None and go to pydicom, whose refusals stay the authority on
broken input: no preamble, another transfer syntax, a walk that does not end cleanly at the
pixel data or the end of the file. An enhanced object's per-frame functional groups are
left out (``frames_span``) for their own reader, ``dicom_raw``.
"""

from __future__ import annotations

import struct

from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.values import convert_value

from medssl.errors import IngestError
from medssl.io.dicom_raw import (
    LONG_VRS,
    SMALL_FILE,
    DatasetView,
    _keyword_tag,
    frame_sequence,
    skip_sequence,
)

IMPLICIT_LE, EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
PIXEL_DATA, PER_FRAME, SHARED = 0x7FE00010, 0x52009230, 0x52009229
_HEAD = struct.Struct("<HHI").unpack_from  # group, element, 4 more bytes
_ELEMENT = struct.Struct("<HH2sH").unpack_from  # group, element, explicit VR, short length (implicit: length's low half, high half)
SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_U32 = struct.Struct("<I").unpack_from
_U16 = struct.Struct("<H").unpack_from


class Header(DatasetView):
    """Top-level elements of one file up to its pixel data, converted on first access.

    Read through :class:`~medssl.io.dicom_raw.DatasetView`, plus attribute access by keyword.
    ``pixel_value_offset``: where a defined-length PixelData value starts, if it is whole;
    ``frames_span``: the bytes of an enhanced object's PerFrameFunctionalGroupsSequence,
    left out of the elements and read by ``dicom_raw`` into ``frame_items``.
    """

    __slots__ = ("_data", "_done", "_encodings", "_where", "file_meta", "frame_items", "frames_span", "is_implicit", "pixel_value_offset", "shared_items")

    def __init__(self, data: bytes, where: dict[int, tuple], file_meta: FileMetaDataset, implicit: bool, pixel_value_offset: int | None, frames_span: tuple[int, int] | None = None) -> None:
        self._data, self._where, self.file_meta = data, where, file_meta
        self.is_implicit, self.pixel_value_offset, self.frames_span = implicit, pixel_value_offset, frames_span
        self.frame_items: list | None = None
        self.shared_items: list | None = None  # SharedFunctionalGroupsSequence items as dicom_raw reads them
        self._done: dict[int, DataElement] = {}
        self._encodings = None
        charset = self._raw(0x00080005)
        self._encodings = convert_encodings(convert_value("CS", charset) if charset is not None else None)

    def _raw(self, tag: int) -> RawDataElement | None:
        found = self._where.get(tag)
        if found is None:
            return None
        vr, start, length, end = found
        return RawDataElement(BaseTag(tag), vr and vr.decode("ascii"), length, self._data[start:end], start, self.is_implicit, True, True, False)

    def _tags(self) -> dict[int, tuple]:
        return self._where

    def _lookup(self, tag: int) -> DataElement:
        elem = self._done.get(tag)
        if elem is None:
            elem = convert_raw_data_element(self._raw(tag), encoding=self._encodings, ds=self)
            self._done[tag] = elem
        return elem

    def __len__(self) -> int:
        return len(self._where)

    @property
    def pixel_value_length(self) -> int:
        """Declared length of a whole PixelData value (0 when there is none)."""
        pixel = self._where.get(PIXEL_DATA) if self.pixel_value_offset is not None else None
        return 0 if pixel is None else pixel[2]

    def to_dataset(self) -> Dataset:
        """A pydicom Dataset of the same raw elements, pixel data included: pydicom converts each
        element only when read (de-identification reads the public ones; private groups stay bytes)."""
        ds = Dataset({tag: self._raw(tag) for tag in self._where})
        ds.file_meta = self.file_meta
        ds.set_original_encoding(self.is_implicit, True, self._encodings)
        return ds

    def __getattr__(self, name: str):
        if name.startswith("_") or _keyword_tag(name) is None:
            raise AttributeError(name)
        elem = self.get_item(name)
        if elem is None:
            raise AttributeError(name)
        return elem.value


def read_header(data: bytes) -> Header | None:
    """The header of an uncompressed little-endian classic file, or None (see the module)."""
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    try:
        meta: dict[int, RawDataElement] = {}
        offset, n = 132, len(data)
        while offset + 8 <= n and _U16(data, offset)[0] == 0x0002:
            group, element, _ = _HEAD(data, offset)
            vr = data[offset + 4 : offset + 6]
            length, start = (_U32(data, offset + 8)[0], offset + 12) if vr in LONG_VRS else (_U16(data, offset + 6)[0], offset + 8)
            if length == 0xFFFFFFFF or start + length > n:
                return None
            tag = group << 16 | element
            meta[tag] = RawDataElement(BaseTag(tag), vr.decode("ascii"), length, data[start : start + length], start, False, True, True, False)
            offset = start + length
        file_meta = FileMetaDataset(meta)
        syntax = str(file_meta.get("TransferSyntaxUID", "")).rstrip("\0 ")
        if syntax not in (IMPLICIT_LE, EXPLICIT_LE):
            return None
        implicit = syntax == IMPLICIT_LE
        walked = _walk(data, offset, implicit)
        if walked is None:
            return None
        where, pixels, frames, frame_items, shared_items = walked
    except (struct.error, IndexError, ValueError, UnicodeDecodeError, IngestError):
        return None
    if not where:
        return None
    header = Header(data, where, file_meta, implicit, pixels, frames)
    header.frame_items, header.shared_items = frame_items, shared_items
    return header


def _walk(data: bytes, offset: int, implicit: bool):
    """Top-level elements from ``offset`` to the pixel data: ``(where, pixels, frames,
    frame_items, shared_items)``, or None for anything pydicom should judge.

    The inner loop of every classic file's scan (a GE header holds ~350 elements): one
    ``unpack`` per element, the VR kept as bytes, the rare cases (sequences, enhanced
    groups, pixel data: all tags >= (5200,9229)) tested once per element.
    """
    where: dict[int, tuple] = {}
    previous, pixels, frames, frame_items, shared_items = -1, None, None, None, None
    n = len(data)
    explicit = not implicit
    while offset + 8 <= n:
        group, element, code, short = _ELEMENT(data, offset)
        tag = group << 16 | element
        if tag <= previous:
            return None  # out of order: pydicom judges
        previous = tag
        if explicit:
            if code in LONG_VRS:
                length, start = _U32(data, offset + 8)[0], offset + 12
            elif code in SHORT_VRS:
                length, start = short, offset + 8
            elif code.isalpha() and code.isupper():  # a VR this table does not know: short form, as pydicom reads it
                length, start = short, offset + 8
            else:
                return None
            vr = code
        else:
            vr, length, start = None, short << 16 | _U16(data, offset + 4)[0], offset + 8
        if tag >= SHARED:
            if group == 0xFFFE:
                return None  # a stray item: pydicom judges
            if tag == PIXEL_DATA:
                if length != 0xFFFFFFFF and start + length <= n:
                    pixels = start
                    where[tag] = (vr, start, length, start + length)  # kept for to_dataset(), not read by scans
                return where, pixels, frames, frame_items, shared_items
            if tag == PER_FRAME:  # enhanced: the per-frame groups have their own reader (dicom_raw)
                if implicit or n <= SMALL_FILE:
                    return None
                frame_items, end = frame_sequence(data, start, length)
                frames = (offset, end)
                offset = end
                continue
            if tag == SHARED and explicit:  # read for the records by dicom_raw too (kept for the header)
                shared_items = frame_sequence(data, start, length)[0]
        if length == 0xFFFFFFFF:
            if explicit and code not in (b"SQ", b"UN"):
                return None
            end = skip_sequence(data, start, length, implicit)
            where[tag] = (b"SQ" if explicit else None, start, length, end - 8)  # items, without the delimiter
            offset = end
            continue
        end = start + length
        if end > n:
            return None  # a shortfall: pydicom's reader reports it
        where[tag] = (vr, start, length, end)
        offset = end
    if offset < n and any(data[offset:]):
        return None  # a few bytes that may be a cut element header: pydicom judges
    return where, pixels, frames, frame_items, shared_items
