"""Writer for the Siemens CSA2 ("SV10") private header, the minimum mosaic readers need.

Layout (little endian), as described by nibabel's ``nicom/csareader.py`` and the syngo
DICOM conformance statement::

    "SV10" "\\4\\3\\2\\1"  uint32 n_tags  uint32 77
    per tag:  char name[64]  int32 vm  char vr[4]  int32 syngodt  int32 n_items  int32 77
      per item: int32 [len, len, 77, len]  data[len] (NUL-terminated text), padded to 4 bytes
      (n_items >= vm; items past vm are empty)

Every value is written as text (numbers as decimal strings), which is how Siemens
stores them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

_SYNGO_DT = {
    "IS": 6,
    "US": 3,
    "UL": 5,
    "SL": 4,
    "FD": 4,
    "DS": 3,
    "FL": 2,
    "LO": 19,
    "SH": 22,
    "ST": 21,
    "CS": 16,
}
_MAGIC = 77
_MIN_ITEMS = 6  # Siemens pads every tag with empty items; dcm2niix reads up to 3 items blindly


def _format(value: object, vr: str) -> bytes:
    if vr in ("FD", "FL", "DS"):
        text = repr(float(value))
    elif vr in ("IS", "US", "UL", "SL"):
        text = str(int(value))  # type: ignore[arg-type]
    else:
        text = str(value)
    return text.encode("latin-1") + b"\x00"


def encode_csa2(tags: Sequence[tuple[str, str, Sequence[object]]]) -> bytes:
    """Bytes of a CSA2 header holding ``(name, vr, values)`` triples, in the given order.

    name: CSA element name (<= 63 chars), vr: DICOM VR code, values: one item each.
    Like Siemens, each tag holds at least 6 items, the unused ones empty.
    """
    out = bytearray(b"SV10\x04\x03\x02\x01")
    out += struct.pack("<2I", len(tags), _MAGIC)
    for name, vr, values in tags:
        if len(name) > 63 or len(vr) > 3:
            raise ValueError(f"CSA tag {name!r}/{vr!r}: name must be < 64 and VR < 4 characters")
        out += struct.pack(
            "<64si4s3i",
            name.encode("latin-1"),
            len(values),
            vr.encode("latin-1"),
            _SYNGO_DT.get(vr, 0),
            max(len(values), _MIN_ITEMS),
            _MAGIC,
        )
        for value in values:
            data = _format(value, vr)
            out += struct.pack("<4i", len(data), len(data), _MAGIC, len(data))
            out += data + b"\x00" * ((-len(data)) % 4)
        for _ in range(_MIN_ITEMS - len(values)):
            out += struct.pack("<4i", 0, 0, _MAGIC, 0)
    return bytes(out)
