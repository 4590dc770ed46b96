"""What happens to one data element: the rule that resolves the table's codes, and the
values that replace the originals.

Combined codes (storage case, no IOD knowledge). PS3.15 writes a combined code such as
X/Z/D as "X unless Z or D is needed to keep the object valid", which depends on whether
the attribute is Type 1, 2 or 3 in the IOD at hand. A de-identifier that sees every IOD
cannot know that per attribute, so medssl resolves each code to the alternative that is
valid in every IOD while carrying none of the original content:

    X/Z      -> Z  empty: valid where the attribute is Type 2; X/Z is never used for Type 1
    Z/D      -> D  dummy: valid where the attribute is Type 1
    X/D      -> D  dummy
    X/Z/D    -> D  dummy
    X/Z/U*   -> U  the sequence stays and its items are de-identified, so the referenced
                   UIDs inside are remapped like every other UID and references survive

A dummy carries nothing of the original: a keyed token for text (equal originals give
equal tokens, which keeps an Institution Name consistent across a study), a keyed
``2.25`` UID, ``19000101`` / ``19000101000000`` / ``000000`` for dates and times, zero
for numbers. A sequence cannot be given a safe dummy item (Content Sequence and Graphic
Annotation Sequence items hold free text the table does not list one by one), so D on a
sequence empties it.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.multival import MultiValue
from pydicom.uid import UID_dictionary

from medssl.deid.dates import DUMMY_DA, DUMMY_DT, DUMMY_TM
from medssl.deid.pseudonym import Pseudonymizer
from medssl.deid.table import ProfileRow


class Action(StrEnum):
    """What medssl does to an element; the values are the words of the conformance doc."""

    REMOVE = "remove"
    EMPTY = "empty"
    DUMMY = "dummy"
    KEEP = "keep"
    UID = "uid"
    SHIFT = "shift"
    PATIENT = "patient"
    RECURSE = "recurse"


ACTION_MEANING = {
    Action.REMOVE: "removed",
    Action.EMPTY: "zero-length value; a sequence keeps no items",
    Action.DUMMY: "dummy: keyed token (text), keyed 2.25 UID, 19000101 / 19000101000000 / "
    "000000 (dates, times), 0 (numbers), keyed bytes (binary)",
    Action.KEEP: "kept; text values sanitised (no control characters, path separators, '..')",
    Action.UID: "each value replaced by the keyed UID 2.25.<128 bits>; registered DICOM "
    "UIDs (SOP classes, transfer syntaxes) kept",
    Action.SHIFT: "date moved by the patient's day offset, precision kept, UTC offset dropped",
    Action.PATIENT: "token(PatientID, 'patient'), so one patient's studies stay linked",
    Action.RECURSE: "sequence kept; every item de-identified by the same rules",
}

_RESOLVED = {
    "X": Action.REMOVE,
    "Z": Action.EMPTY,
    "D": Action.DUMMY,
    "K": Action.KEEP,
    "C": Action.DUMMY,  # no automatic clean is possible; a dummy keeps nothing
    "U": Action.UID,
    "X/Z": Action.EMPTY,
    "Z/D": Action.DUMMY,
    "X/D": Action.DUMMY,
    "X/Z/D": Action.DUMMY,
    "X/Z/U*": Action.UID,
}
PATIENT_TOKEN_KEYWORDS = frozenset({"PatientID", "PatientName"})
STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
)
FREE_TEXT_VRS = frozenset({"AE", "LO", "LT", "SH", "ST", "UC", "UT"})
# Technical free-text attributes the table does not list that medssl keeps (the manifest
# and training use them). Everything else in a free-text VR outside the table is removed.
RETAINED_TEXT = frozenset(
    {
        "Manufacturer", "ManufacturerModelName", "BodyPartExamined", "ConvolutionKernel",
        "RescaleType", "SequenceName", "PulseSequenceName", "ReceiveCoilName",
        "TransmitCoilName", "FilterType", "ScanOptions", "ImagedNucleus",
        "PhotometricInterpretation", "ContrastBolusRoute", "PositionReferenceIndicator",
        "PixelPresentation", "VolumetricProperties", "VolumeBasedCalculationTechnique",
        "FrameOfReferenceUID", "LossyImageCompressionMethod", "SpecificCharacterSet",
    }
)
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMBER_VRS = frozenset({"FD", "FL", "SL", "SS", "SV", "UL", "US", "UV", "US or SS"})
_UNSAFE_CHARS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f/\\]")


def planned_action(
    row: ProfileRow, vr: str, *, date_shift: bool, keep_descriptions: bool
) -> Action:
    """The action for a table attribute of value representation ``vr`` under the options."""
    if row.keyword in PATIENT_TOKEN_KEYWORDS:
        return Action.PATIENT
    if date_shift and row.modified_dates:
        if vr in ("DA", "DT"):
            return Action.SHIFT
        if vr == "TM":
            return Action.KEEP  # a whole-day shift leaves the time of day as it was
    if keep_descriptions and row.clean_descriptors:
        return Action.RECURSE if vr == "SQ" else Action.KEEP
    action = _RESOLVED[row.basic]
    if vr == "SQ" and action is Action.UID:
        return Action.RECURSE
    if vr == "SQ" and action is Action.DUMMY:
        return Action.EMPTY
    return action


def untabled_action(tag: int, vr: str, *, date_shift: bool) -> Action:
    """The action for a public element the table does not list (medssl's additions).

    Person names and URLs go (a name is identifying wherever it sits; a URL points at the
    source system), and so do public elements of unknown VR (nothing shows they are
    safe); UIDs are remapped unless they are registered DICOM UIDs; dates are shifted or
    replaced, so "temporal information removed" is true of the whole object;
    overlay groups go whole, since Overlay Data (removed per the table) is Type 1 in its
    module; sequences are walked; free text (LO, SH, ST, LT, UT, UC, AE) goes unless the
    attribute is in ``RETAINED_TEXT``, the technical attributes training needs (a vendor
    or kernel name, not a person); everything else is kept and sanitised.
    """
    group = tag >> 16
    if group & 0xFF00 in (0x5000, 0x6000) or group == 0x0002:
        return Action.REMOVE  # group 0002 belongs in the file meta, never in the data set
    if vr in ("PN", "UR", "UN"):  # UN: a public element pydicom cannot type cannot be vetted
        return Action.REMOVE
    if vr == "UI":
        return Action.UID
    if vr in ("DA", "DT"):
        return Action.SHIFT if date_shift else Action.DUMMY
    if vr == "SQ":
        return Action.RECURSE
    if vr in FREE_TEXT_VRS and keyword_for_tag(tag) not in RETAINED_TEXT:
        return Action.REMOVE
    return Action.KEEP


def sanitize_text(value: str) -> str:
    """``value`` without control characters, path separators or ``..``.

    Such characters have no business in a header value and are how a crafted file tries
    to reach a path or a terminal; they are replaced, not escaped, so nothing downstream
    can undo it. Tab, CR, LF and FF stay: LT, ST and UT text may use them.
    """
    value = _UNSAFE_CHARS.sub("_", value)
    while ".." in value:
        value = value.replace("..", "_")
    return value


def remap_uid(value: str, pseudo: Pseudonymizer) -> str:
    """A registered DICOM UID stays (it names a standard, not a patient); others remap."""
    stripped = value.rstrip("\x00 ")
    if not stripped or stripped in UID_dictionary:
        return stripped
    return pseudo.uid(stripped)


def dummy_value(vr: str, original: Any, kind: str, pseudo: Pseudonymizer) -> Any:
    """A non-empty value of ``vr`` that carries nothing of ``original``.

    Returns None when no dummy exists for the VR; the caller then empties the element.
    """
    if vr == "DA":
        return DUMMY_DA
    if vr == "DT":
        return DUMMY_DT
    if vr == "TM":
        return DUMMY_TM
    if vr in ("IS", "DS"):
        return "0"
    if vr == "AS":
        return "000D"
    if vr in _NUMBER_VRS:
        return 0
    if vr in _BINARY_VRS:
        data = bytes(original) if isinstance(original, (bytes, bytearray)) else b""
        size = max(2, min(32, len(data) + len(data) % 2))
        return bytes.fromhex(pseudo.token(data.hex(), kind, length=2 * size))
    text = as_text(original)
    if vr == "UI":
        return pseudo.uid(text)
    if vr == "CS":
        return pseudo.token(text, kind).upper()
    if vr in STRING_VRS:
        return pseudo.token(text, kind)
    return None


def as_text(value: Any) -> str:
    """One string for a possibly multi-valued element value (for keying, never for output)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return str(value)
