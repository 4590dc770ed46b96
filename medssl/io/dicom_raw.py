"""Per-frame functional groups read straight from the bytes, without building pydicom datasets.

An enhanced multi-frame object carries one PerFrameFunctionalGroupsSequence item per
frame, each with a dozen nested sequences: 5,000 frames make some 800,000 elements, and
pydicom's Python-level parser and its Dataset objects spend tens of seconds on them where
dcm2niix spends a fraction of one. Ingest needs a few values of each frame (position,
orientation, spacing, rescale, frame content, echo, diffusion, frame type), so:

- :func:`split_per_frame` finds the top-level (5200,9230) element of an explicit-VR
  little-endian file and returns the file without it (pydicom parses the rest quickly)
  plus its items, parsed here into :class:`RawItem` trees;
- :class:`RawItem` answers the small part of pydicom's ``Dataset`` interface the record
  builders use (``in``, ``get``, ``[]``, ``get_item``, iteration, ``group_dataset``),
  converting a value only when it is asked for.

Anything else (implicit VR, big endian, deflate, an element that does not parse) returns
None and the caller falls back to pydicom, so this is a fast path, never a second meaning.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Iterator
from functools import lru_cache

from pydicom.datadict import tag_for_keyword

from medssl.errors import IngestError
from medssl.types import RejectReason

EXPLICIT_LE = "1.2.840.10008.1.2.1"
PER_FRAME = 0x52009230
SMALL_FILE = 1 << 16  # below this, pydicom reads functional groups about as fast: the fast paths leave such files to it
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
BINARY = {"FD": "d", "FL": "f", "UL": "I", "US": "H", "SL": "i", "SS": "h", "UV": "Q", "SV": "q", "AT": "I"}
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})


class RawElement:
    """One element: ``tag`` (int), ``VR`` (str) and ``value`` decoded on first access."""

    __slots__ = ("VR", "_raw", "_value", "tag")

    def __init__(self, tag: int, vr: str, raw) -> None:
        self.tag, self.VR, self._raw, self._value = tag, vr, raw, None

    @property
    def value(self):
        if self._value is None:
            self._value = _decode(self.VR, self._raw)
        return self._value


class DatasetView(ABC):
    """The part of pydicom's ``Dataset`` interface the record builders use: ``in``, ``get``,
    ``[]``, ``get_item``, iteration, ``group_dataset``. Subclasses say which tags they hold
    (``_tags``) and how one becomes an element (``_lookup``)."""

    __slots__ = ()

    @abstractmethod
    def _tags(self):
        """A container of the int tags held, in file order."""

    @abstractmethod
    def _lookup(self, tag: int):
        """The element of a tag that ``_tags`` holds."""

    @staticmethod
    def _tag(key) -> int | None:
        if isinstance(key, str):
            return _keyword_tag(key)
        if isinstance(key, tuple):
            return key[0] << 16 | key[1]
        return int(key)

    def __contains__(self, key) -> bool:
        return self._tag(key) in self._tags()

    def get_item(self, key):
        tag = self._tag(key)
        return None if tag is None or tag not in self._tags() else self._lookup(tag)

    def __getitem__(self, key):
        elem = self.get_item(key)
        if elem is None:
            raise KeyError(key)
        return elem

    def get(self, key, default=None):
        """As ``Dataset.get``: a keyword gives the value, a tag gives the element."""
        elem = self.get_item(key)
        if elem is None:
            return default
        return elem.value if isinstance(key, str) else elem

    def __iter__(self) -> Iterator:
        return (self._lookup(tag) for tag in list(self._tags()))

    def group_dataset(self, group: int) -> list:
        return [self._lookup(tag) for tag in list(self._tags()) if tag >> 16 == group]


class RawItem(DatasetView):
    """A sequence item: tag -> (VR, value), read through :class:`DatasetView`.

    Values are kept as (VR, bytes) or ("SQ", [items]) and become :class:`RawElement`
    objects only when asked for: most of the 800,000 elements of a long enhanced file are
    never looked at.
    """

    __slots__ = ("elements",)

    def __init__(self, elements: dict[int, tuple]) -> None:
        self.elements = elements

    def _tags(self) -> dict[int, tuple]:
        return self.elements

    def _lookup(self, tag: int) -> RawElement:
        vr, raw = self.elements[tag]
        return RawElement(tag, vr, raw)


@lru_cache(maxsize=512)
def _keyword_tag(keyword: str) -> int | None:
    return tag_for_keyword(keyword)


def split_per_frame(data: bytes, span: tuple[int, int] | None = None) -> tuple[bytes, list[RawItem] | None, tuple[int, int]] | None:
    """``data`` without its PerFrameFunctionalGroupsSequence, that sequence's items, and its byte span.

    With ``span`` (from an earlier read of the same bytes) the element is cut out without
    parsing it again (items: None), after checking that the span still frames it. None when
    the file is not explicit VR little endian, has no such element at the top level, or
    anything on the way does not parse (the caller then reads it with pydicom).
    """
    if len(data) < 144 or data[128:132] != b"DICM" or EXPLICIT_LE.encode() not in data[132:1024]:
        return None
    if span is not None and _frames_span(data, span):
        return data[: span[0]] + data[span[1] :], None, span
    try:
        offset = _skip_meta(data)
        if offset is None:
            return None
        while offset < len(data):
            tag, vr, length, start = _header(data, offset)
            if tag == PER_FRAME:
                items, end = _sequence(data, start, length, FRAME_GROUPS)
                return data[:offset] + data[end:], items, (offset, end)
            if tag > PER_FRAME:
                return None
            offset = _skip(data, start, vr, length)
    except (struct.error, IndexError, ValueError):
        return None
    return None


def frame_sequence(data: bytes, start: int, length: int) -> tuple[list[RawItem], int]:
    """The items of a PerFrameFunctionalGroupsSequence whose value starts at ``start`` (explicit
    VR LE), with only the groups ingest reads parsed, and the offset after it."""
    return _sequence(data, start, length, FRAME_GROUPS)


def _frames_span(data: bytes, span: tuple[int, int]) -> bool:
    start, end = span
    if not (0 < start < end <= len(data)) or data[start : start + 6] != b"\x00\x52\x30\x92SQ":
        return False
    (length,) = struct.unpack_from("<I", data, start + 8)
    return end == start + 12 + length if length != 0xFFFFFFFF else data[end - 8 : end] == SEQ_END_BYTES


SEQ_END_BYTES = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def _skip_meta(data: bytes) -> int | None:
    """Offset of the first dataset element after the file meta group (explicit VR LE)."""
    offset = 132
    while offset + 8 <= len(data):
        (group,) = struct.unpack_from("<H", data, offset)
        if group != 0x0002:
            syntax = data[132:offset]
            return offset if EXPLICIT_LE.encode() in syntax else None
        _, vr, length, start = _header(data, offset)
        offset = _skip(data, start, vr, length)
    return None


def _header(data: bytes, offset: int) -> tuple[int, bytes, int, int]:
    """(tag, VR, length, value offset) of the explicit-VR element at ``offset``."""
    group, element = struct.unpack_from("<HH", data, offset)
    tag = group << 16 | element
    if group == 0xFFFE:  # item / delimiters carry no VR
        (length,) = struct.unpack_from("<I", data, offset + 4)
        return tag, b"", length, offset + 8
    vr = data[offset + 4 : offset + 6]
    if vr in LONG_VRS:
        (length,) = struct.unpack_from("<I", data, offset + 8)
        return tag, vr, length, offset + 12
    (length,) = struct.unpack_from("<H", data, offset + 6)
    return tag, vr, length, offset + 8


def _skip(data: bytes, start: int, vr: bytes, length: int) -> int:
    if length != 0xFFFFFFFF:
        end = start + length
        if end > len(data):
            raise ValueError("element runs past the end")
        return end
    if vr == b"SQ" or vr == b"UN":
        return _sequence(data, start, length)[1]
    raise ValueError("undefined length outside a sequence")


_TAG = struct.Struct("<HH").unpack_from
_U32 = struct.Struct("<I").unpack_from
_U16 = struct.Struct("<H").unpack_from


def _sequence(data: bytes, start: int, length: int, keep: frozenset[int] | None = None) -> tuple[list[RawItem], int]:
    """Items of a sequence whose value starts at ``start``; returns them and the end offset.

    ``keep``: the only sequences of each item worth parsing (others are stepped over);
    None keeps everything.
    """
    items: list[RawItem] = []
    end = start + length if length != 0xFFFFFFFF else len(data)
    if end > len(data):
        raise IngestError(RejectReason.TRUNCATED, "file ends inside the per-frame functional groups (5200,9230)")
    offset = start
    while offset < end:
        group, element = _TAG(data, offset)
        (item_length,) = _U32(data, offset + 4)
        if group == 0xFFFE and element == 0xE0DD:
            return items, offset + 8
        if group != 0xFFFE or element != 0xE000:
            raise ValueError("not an item")
        item, offset = _item(data, offset + 8, item_length, keep)
        items.append(item)
    if length == 0xFFFFFFFF:
        raise IngestError(RejectReason.TRUNCATED, "file ends inside an undefined-length sequence")
    return items, end


def _item(data: bytes, start: int, length: int, keep: frozenset[int] | None = None) -> tuple[RawItem, int]:
    """One item's elements (header parsing inlined: this loop sees every element of the groups)."""
    elements: dict[int, tuple] = {}
    end = start + length if length != 0xFFFFFFFF else len(data)
    offset = start
    while offset < end:
        group, element = _TAG(data, offset)
        if group == 0xFFFE:
            if element == 0xE00D:
                return RawItem(elements), offset + 8
            raise ValueError("item or sequence delimiter inside an item")
        vr = data[offset + 4 : offset + 6]
        if vr in LONG_VRS:
            (value_length,) = _U32(data, offset + 8)
            value_start = offset + 12
        else:
            (value_length,) = _U16(data, offset + 6)
            value_start = offset + 8
        tag = group << 16 | element
        if vr == b"SQ" or (value_length == 0xFFFFFFFF and vr == b"UN"):
            if keep is not None and tag not in keep and group != 0x2005:  # Philips keeps its scale slope in 2005
                offset = skip_sequence(data, value_start, value_length)
                continue
            children, offset = _sequence(data, value_start, value_length)
            elements[tag] = ("SQ", children)
            continue
        if value_length == 0xFFFFFFFF:
            raise ValueError("undefined length outside a sequence")
        offset = value_start + value_length
        if offset > end:
            raise IngestError(RejectReason.TRUNCATED, "file ends inside the per-frame functional groups (5200,9230)")
        elements[tag] = (vr.decode("ascii", "replace"), data[value_start:offset])
    if length == 0xFFFFFFFF:
        raise IngestError(RejectReason.TRUNCATED, "file ends inside an undefined-length item")
    return RawItem(elements), end


def skip_sequence(data: bytes, start: int, length: int, implicit: bool = False) -> int:
    """The end offset of a sequence whose value starts at ``start`` (after its delimiter when
    of undefined length), stepping over its elements without keeping any."""
    if length != 0xFFFFFFFF:
        return start + length
    offset, depth, n = start, 0, len(data)
    while offset + 8 <= n:  # depth counts open undefined-length items and sequences inside this one
        group, element = _TAG(data, offset)
        (rest,) = _U32(data, offset + 4)
        if group == 0xFFFE:
            if element == 0xE0DD:
                if depth == 0:
                    return offset + 8
                depth -= 1
            elif element == 0xE00D:
                depth -= 1
            elif rest != 0xFFFFFFFF:  # a defined-length item: jump over it
                offset += 8 + rest
                continue
            else:
                depth += 1
            offset += 8
            continue
        if implicit:
            value_length, head = rest, 8
        elif data[offset + 4 : offset + 6] in LONG_VRS:
            value_length, head = _U32(data, offset + 8)[0], 12
        else:
            value_length, head = rest >> 16, 8
        if value_length == 0xFFFFFFFF:
            depth += 1
            offset += head
        else:
            offset += head + value_length
    raise IngestError(RejectReason.TRUNCATED, "file ends inside an undefined-length sequence")


# the functional groups ingest reads from each frame (PS3.3 C.7.6.16): everything else is stepped over
FRAME_GROUPS = frozenset({
    0x00209113,  # PlanePositionSequence
    0x00209116,  # PlaneOrientationSequence
    0x00289110,  # PixelMeasuresSequence
    0x00289145,  # PixelValueTransformationSequence
    0x00209111,  # FrameContentSequence
    0x00189114,  # MREchoSequence
    0x00189117,  # MRDiffusionSequence
    0x00189226,  # MRImageFrameTypeSequence
    0x00189329,  # CTImageFrameTypeSequence
})


def _decode(vr: str, raw):
    """A value as pydicom would give it, loosely: numbers for numeric VRs, text split on backslashes."""
    if vr == "SQ":
        return raw
    if vr in BINARY:
        code = BINARY[vr]
        count = len(raw) // struct.calcsize(code)
        values = struct.unpack_from(f"<{count}{code}", raw)
        return values[0] if count == 1 else list(values)
    if vr in ("DS", "IS") or vr in TEXT_VRS:
        parts = [p.strip(" \0") for p in raw.decode("latin-1").split("\\")]
        if vr in ("DS", "IS"):
            parts = [_number(p, vr) for p in parts]
        return parts[0] if len(parts) == 1 else parts
    return bytes(raw)


def _number(text: str, vr: str):
    if text == "":
        return ""
    try:
        return int(float(text)) if vr == "IS" else float(text)
    except ValueError:
        return text  # an invalid value stays text: the caller names the tag if it needs it
