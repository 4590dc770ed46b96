"""Refusals name an element by offset where its "tag" may be value bytes (issue 15, item 12).

A misaligned parse reads a UID's text as tags: "0.13" is (2E30,3331). Printing that tag
printed four bytes of the UID.
"""

from __future__ import annotations

import struct

import pytest

from medssl.errors import IngestError
from medssl.io.dicom_read import read_dataset


def _element(group: int, element: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHI", group, element, len(value) if length is None else length) + value


def test_a_short_element_read_from_value_bytes_is_named_by_its_offset():
    data = (
        _element(0x0008, 0x0060, b"CT")
        + _element(0x0020, 0x000D, b"1.2.826.0.1.3680043.2")
        + _element(0x0020, 0x0052, b"1.2.3.4.", length=8)
        + b"0.13"  # the rest of the UID, which the parser takes for a tag
        + struct.pack("<I", 255)
        + b"abc"
    )
    with pytest.raises(IngestError) as caught:
        read_dataset(data, stop_before_pixels=False)
    message = caught.value.message
    assert "(2E30,3331)" not in message
    assert "0.13" not in message
    assert "at byte 63 (3 of 255 bytes)" in message
