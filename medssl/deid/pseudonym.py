"""Keyed, deterministic pseudonyms: UIDs, opaque ids and per-patient date shifts.

Every output is HMAC-SHA256(key, domain || kind || value). The same key and input give the
same output on any machine, so instances de-identified on different days or hosts still
reference each other (a Referenced SOP Instance UID keeps pointing at the right SOP
Instance UID). Without the key the outputs are unlinkable to the inputs and, across keys,
to each other. ``kind`` separates domains, so a patient id and a study id with the same
text never map to the same token.
"""

from __future__ import annotations

import hashlib
import hmac

_DOMAIN = b"medssl.deid.v1"
_MIN_KEY_BYTES = 16


class Pseudonymizer:
    """Keyed pseudonyms for one site key (see ``load_or_create_key``)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError(f"key must be bytes, got {type(key).__name__}")
        if len(key) < _MIN_KEY_BYTES:
            raise ValueError(f"key has {len(key)} bytes; at least {_MIN_KEY_BYTES} are needed")
        self._key = bytes(key)

    def __repr__(self) -> str:  # never show the key
        return "Pseudonymizer(<key hidden>)"

    def _digest(self, kind: str, value: str) -> bytes:
        if not kind:
            raise ValueError("kind must be a non-empty string")
        message = b"\x00".join(
            (_DOMAIN, kind.encode("utf-8"), value.encode("utf-8", "surrogatepass"))
        )
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """A UID ``2.25.<decimal>`` for ``value``: at most 44 characters, valid DICOM.

        The 128 bits are laid out as an RFC 9562 version-8 (custom) UUID so the ``2.25``
        arc, which is reserved for UUIDs, holds a well-formed one. Trailing NUL and space
        padding are ignored, so a padded and an unpadded copy of a UID map alike.
        """
        raw = bytearray(self._digest("uid", value.rstrip("\x00 "))[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC variant
        return f"2.25.{int.from_bytes(raw, 'big')}"

    def token(self, value: str, kind: str, length: int = 16) -> str:
        """A lowercase hex id of ``length`` characters (1-64) for ``value`` within ``kind``.

        Kinds used by medssl: ``patient``, ``study``, ``series``, ``volume``, ``source``;
        the de-identifier uses ``D:<keyword>`` for dummy values.
        """
        if not 1 <= length <= 64:
            raise ValueError(f"token length {length} is outside 1..64")
        return self._digest(kind, value).hex()[:length]

    def date_shift_days(self, patient_key: str, max_days: int = 365) -> int:
        """A nonzero day offset in ``[-max_days, -1] U [1, max_days]``, fixed per patient.

        One offset per patient keeps intervals between that patient's studies exact while
        hiding the calendar dates (PS3.15 E.3.6, Modified Dates option).
        """
        if max_days < 1:
            raise ValueError(f"max_days must be at least 1, got {max_days}")
        n = int.from_bytes(self._digest("date_shift", patient_key)[:8], "big") % (2 * max_days)
        offset = n - max_days  # -max_days .. max_days-1
        return offset + 1 if offset >= 0 else offset
