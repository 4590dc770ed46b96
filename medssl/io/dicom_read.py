"""Read DICOM bytes: strict where geometry and pixels are concerned, lenient elsewhere.

Real scanners write values that break the letter of PS3.5 in elements nobody converts:
a Siemens private SH of 21 characters, a GE private DS holding ``P1:GEHC...``. Refusing a
series for those would lose data that dcm2niix and every viewer read normally, and
de-identification removes most of them anyway. So parsing is lenient (pydicom's WARN mode,
warnings silenced), and the elements a volume is built from are checked here one by one,
as numbers of the right count (:func:`numbers`): a failure names the element by its tag,
never by its value.

Bytes after the last complete element are padding, not truncation (some scanners pad after
PixelData; pydicom and dcm2niix read such files normally). Only a shortfall is truncation:
an element shorter than its declared length, or the start of an element header cut off.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from medssl.errors import IngestError
from medssl.types import RejectReason

PIXEL_DATA = Tag(0x7FE00010)
DEFLATED = "1.2.840.10008.1.2.1.99"


@contextmanager
def lenient_reading() -> Iterator[None]:
    """pydicom converts invalid values as best it can and says nothing (we judge what we use)."""
    settings = pydicom.config.settings
    old = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode = old


def tag_text(tag: int | BaseTag) -> str:
    """``(gggg,eeee)``: how refusals name an element (its value may identify someone)."""
    tag = Tag(tag)
    return f"({tag.group:04X},{tag.element:04X})"


def read_dataset(data: bytes, *, stop_before_pixels: bool) -> Dataset:
    """Parse DICOM bytes; every failure becomes an :class:`IngestError` without values.

    Exception texts from pydicom can quote element values, so they are never passed on.
    """
    force = not (len(data) >= 132 and data[128:132] == b"DICM")
    try:
        ds = _parse(data, stop_before_pixels, force)
    except InvalidDicomError:
        raise IngestError(RejectReason.NOT_AN_IMAGE, "not a DICOM file") from None
    except (EOFError, OSError) as exc:
        raise IngestError(RejectReason.TRUNCATED, f"DICOM file ends early ({type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad input
        raise IngestError(RejectReason.MALFORMED, f"DICOM header unreadable ({type(exc).__name__})") from None
    if len(ds) == 0:
        raise IngestError(RejectReason.MALFORMED, "DICOM file holds no data elements")
    _check_complete(ds, data, stop_before_pixels)
    return ds


def read_dataset_and_frames(data: bytes, *, stop_before_pixels: bool, span: tuple[int, int] | None = None) -> tuple[Dataset, list | None, tuple[int, int] | None]:
    """:func:`read_dataset` with the per-frame functional groups read by the fast path.

    Returns the dataset without its PerFrameFunctionalGroupsSequence, that sequence's items
    (``medssl.io.dicom_raw.RawItem``) and its byte span where the fast path applies;
    otherwise the dataset as :func:`read_dataset` gives it, None and None. With ``span``
    (from the scan of the same file) the groups are cut out unparsed (items: None).
    """
    from medssl.io.dicom_raw import SMALL_FILE, split_per_frame

    split = split_per_frame(data, span) if len(data) > SMALL_FILE else None
    if split is None:
        return read_dataset(data, stop_before_pixels=stop_before_pixels), None, None
    rest, items, found = split
    return read_dataset(rest, stop_before_pixels=stop_before_pixels), items, found


def _parse(data: bytes, stop_before_pixels: bool, force: bool) -> Dataset:
    with lenient_reading():
        try:
            ds = _dcmread(data, stop_before_pixels, force)
        except InvalidDicomError:
            raise
        except Exception:
            if stop_before_pixels:
                raise
            end = _pixel_data_end(data, force)  # whatever follows the pixels broke the parser:
            if end is None or end >= len(data):  # padding, if the pixels themselves are whole
                raise
            return _dcmread(data[:end], False, force)
        if not stop_before_pixels:
            end = _pixels_followed_at(ds)
            if end is not None:  # elements (or what pydicom took for them) after the pixels: padding
                return _dcmread(data[:end], False, force)
        return ds


def _pixels_followed_at(ds: Dataset) -> int | None:
    """The end offset of a whole native PixelData element that something follows; else None."""
    elements = getattr(ds, "_dict", None)
    if elements is None or PIXEL_DATA not in elements or next(reversed(elements)) == PIXEL_DATA:
        return None  # (file order: garbage after the pixels may parse as any tag, even a smaller one)
    pixel = elements[PIXEL_DATA]
    length, tell = getattr(pixel, "length", None), getattr(pixel, "value_tell", None)
    value = pixel.value
    if length in (None, 0xFFFFFFFF) or tell is None or not isinstance(value, (bytes, bytearray)) or len(value) < length:
        return None
    return tell + length


def _dcmread(data: bytes, stop_before_pixels: bool, force: bool) -> Dataset:
    """pydicom's reader; its warning that the file ended inside an element becomes EOFError."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels, force=force)
        ds.file_meta  # noqa: B018 - touch lazily parsed parts inside the context
    if any("end of file" in str(w.message).lower() for w in caught):
        raise EOFError("file ends inside an element")
    return ds


def _pixel_data_end(data: bytes, force: bool) -> int | None:
    """Offset just after a native PixelData element of defined length, from its header."""
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=force)
    start = _elements_end(header)
    head = data[start : start + 12] if start > 0 else b""
    for fmt in ("<", ">"):
        if head[:4] != struct.pack(fmt + "HH", 0x7FE0, 0x0010):
            continue
        if head[4:6] in (b"OB", b"OW", b"UN", b"OV"):  # explicit VR: 2 reserved bytes, 4-byte length
            (length,) = struct.unpack(fmt + "I", head[8:12])
            return None if length == 0xFFFFFFFF else start + 12 + length
        (length,) = struct.unpack(fmt + "I", head[4:8])
        return None if length == 0xFFFFFFFF else start + 8 + length
    return None


def _walk(ds: Dataset) -> tuple[int, int, object | None]:
    """One pass over the raw top-level elements (nothing converted): the file offset after the
    last element of known length (-1 if unknown), the last tag, and an element whose value
    is shorter than its declared length (None if none)."""
    end, last_tag, short = 0, 0, None
    elements = getattr(ds, "_dict", None)  # pydicom's tag -> element map: iterating it converts nothing
    for elem in (elements.values() if elements is not None else ds.elements()):
        tag = int(elem.tag)
        if tag == 0:  # zero padding that pydicom read as elements
            continue
        last_tag = tag
        length = getattr(elem, "length", None)
        if length is None or length == 0xFFFFFFFF:
            end = -1  # undefined length (sequence, encapsulated pixels): its end is not known here
            continue
        value = elem.value
        if short is None and isinstance(value, (bytes, bytearray)) and len(value) < length:
            short = elem
        tell = getattr(elem, "value_tell", None)
        if tell is not None:
            end = tell + length
    return end, last_tag, short


def _elements_end(ds: Dataset) -> int:
    return _walk(ds)[0]


def _check_complete(ds: Dataset, data: bytes, stop_before_pixels: bool) -> None:
    """Refuse a file whose last element falls short; accept padding after it.

    pydicom hands back a short value when the file ends inside an element's value, and
    stops silently when it ends inside the next element's 8-12 byte header; both are
    caught from the raw elements' offsets, without converting any value.
    """
    end, last_tag, short = _walk(ds)
    if short is not None:
        # by offset: the "tag" of a short element may be value bytes the parser took for one
        raise IngestError(RejectReason.TRUNCATED, f"file ends inside the element whose value starts at byte {getattr(short, 'value_tell', '?')} ({len(short.value)} of {short.length} bytes)")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if end <= 0 or syntax == DEFLATED:  # offsets of a deflated stream are not file offsets
        return
    rest = data[end:]
    if stop_before_pixels and len(rest) >= 12:
        return  # the pixel data (or what follows the header) is not looked at here
    if _starts_an_element(rest, last_tag, little=syntax != "1.2.840.10008.1.2.2"):
        raise IngestError(RejectReason.TRUNCATED, f"file ends inside an element header ({len(rest)} bytes after the last whole element)")


def pixel_value_offset(ds: Dataset, data: bytes, needed: int) -> int | None:
    """Where a header read with ``stop_before_pixels`` leaves off, the offset of the PixelData
    value (explicit or implicit VR little endian), if it is defined-length and ``needed`` bytes long at least."""
    start = _elements_end(ds)
    if start <= 0 or data[start : start + 4] != b"\xe0\x7f\x10\x00":
        return None
    if data[start + 4 : start + 6] in (b"OB", b"OW"):
        length, value = struct.unpack_from("<I", data, start + 8)[0], start + 12
    else:
        length, value = struct.unpack_from("<I", data, start + 4)[0], start + 8
    if length == 0xFFFFFFFF or length < needed or value + needed > len(data):
        return None
    return value


def _starts_an_element(rest: bytes, last_tag: int, little: bool) -> bool:
    """Whether trailing bytes shorter than an element header are the start of one (a cut), not padding."""
    if not rest or len(rest) >= 12 or not any(rest):
        return False
    if len(rest) < 4:
        return True  # a few non-zero bytes: too short to tell; a cut is the safe reading
    group, element = struct.unpack("<HH" if little else ">HH", rest[:4])
    return (group << 16 | element) > last_tag and group != 0xFFFF


def numbers(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    """An element holding ``count`` finite numbers, or None when absent/empty.

    A present element that does not hold them is refused, naming its tag (not its value).
    ``ds``: a pydicom Dataset or a ``dicom_raw.RawItem``.
    """
    elem = ds.get_item(keyword) if keyword in ds else None
    if elem is None:
        return None
    try:
        if isinstance(ds, Dataset):
            with lenient_reading():
                value = elem.value if not isinstance(elem, RawDataElement) else ds[keyword].value
        else:  # a dicom_raw.RawItem: its own lenient decoding
            value = elem.value
    except Exception:  # noqa: BLE001 - pydicom cannot even convert it; its text may identify someone
        raise IngestError(RejectReason.GEOMETRY, f"element {tag_text(elem.tag)} ({keyword}) does not hold numbers") from None
    if value is None or value == "" or (hasattr(value, "__len__") and not isinstance(value, (str, bytes)) and len(value) == 0):
        return None
    items = list(value) if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) else [value]
    try:
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise IngestError(RejectReason.GEOMETRY, f"element {tag_text(elem.tag)} ({keyword}) does not hold numbers") from None
    if len(out) != count or any(v != v or abs(v) > 1e7 for v in out):
        raise IngestError(RejectReason.GEOMETRY, f"element {tag_text(elem.tag)} ({keyword}) holds {len(out)} values, expected {count} finite numbers")
    return out


def number(value, default):
    """A lenient number: ``default`` when absent or unreadable (for elements we do not depend on)."""
    try:
        return float(value) if value is not None and str(value).strip() != "" else default
    except (TypeError, ValueError):
        return default


def integer(value, default: int = 0) -> int:
    try:
        return int(float(value)) if value is not None and str(value).strip() != "" else default
    except (TypeError, ValueError, OverflowError):
        return default


def decimals_precision(ds: Dataset, keyword: str) -> float:
    """Half a unit in the last written decimal place of a DS element (its rounding bound), in its unit.

    Values written without a decimal point ("0", "1", "-120") are taken as exact: scanners
    write whole numbers that way, not rounded ones.
    """
    value = ds.get(keyword)
    values = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    worst = 0.0
    for v in values if value is not None else []:
        text = str(getattr(v, "original_string", None) or v).strip().lower()
        mantissa, _, exponent = text.partition("e")
        if "." not in mantissa:
            continue
        decimals = len(mantissa.split(".")[1])
        worst = max(worst, 0.5 * 10.0 ** (-decimals + (integer(exponent) if exponent else 0)))
    return worst


def transfer_syntax(ds: Dataset) -> UID | None:
    """The file's transfer syntax; None for a dataset without file meta (pydicom infers it).

    An empty or unknown TransferSyntaxUID in a file meta leaves the pixel encoding unknown:
    refused by name, not left to fail inside pydicom.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        return None
    with lenient_reading():  # pydicom's warning about an invalid UID would quote it
        value = UID(str(meta.TransferSyntaxUID or "").strip("\0 "))
        known = bool(value) and value.is_transfer_syntax
    if not value:
        raise IngestError(RejectReason.MALFORMED, "element (0002,0010) (TransferSyntaxUID) is empty: the pixel data's encoding is unknown")
    if not known:
        raise IngestError(RejectReason.UNSUPPORTED, "element (0002,0010) (TransferSyntaxUID) names no transfer syntax this reader knows")
    return value
