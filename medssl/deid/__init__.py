"""De-identification: PS3.15 Annex E Basic Profile with keyed, reproducible pseudonyms.

The only layer that sees identifiers; everything after it sees pseudonyms. Imports only
pydicom, the standard library and ``medssl.types`` / ``medssl.errors``.
"""

from __future__ import annotations

from medssl.deid.burned_in import burned_in_risk
from medssl.deid.keyfile import load_or_create_key
from medssl.deid.profile import DeidOptions, deidentify
from medssl.deid.pseudonym import Pseudonymizer
from medssl.deid.table import PROFILE_EDITION, ProfileRow, profile_rows

__all__ = [
    "PROFILE_EDITION",
    "DeidOptions",
    "ProfileRow",
    "Pseudonymizer",
    "burned_in_risk",
    "deidentify",
    "load_or_create_key",
    "profile_rows",
]
