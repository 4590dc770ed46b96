"""PS3.15 Annex E Basic Application Level Confidentiality Profile over a pydicom Dataset.

Rules, in the order they apply to each data set (the top level, the file meta, and every
item of every retained sequence, at any depth):

1. Private elements are removed unless their (private creator, element offset) pair is in
   ``DeidOptions.keep_private``; a private creator goes with its block unless an element
   of the block is kept. Kept private text is sanitised; kept sequences are walked.
2. Each attribute of Table E.1-1 gets the table's Basic Profile action, with combined
   codes resolved as ``actions.py`` states (X/Z -> Z; Z/D, X/D, X/Z/D -> D; X/Z/U* -> U).
   Patient ID and Patient's Name both become ``token(PatientID, 'patient')`` instead of
   empty, so a patient's studies stay linked (a Patient's Name in an item without a
   Patient ID is emptied).
3. Options: ``date_shift`` shifts every DA and DT (table attributes marked C under the
   Modified Dates option, and every date the table does not list) by one nonzero day
   offset per patient; otherwise those dates become 19000101. ``keep_descriptions`` keeps
   the attributes marked C under Clean Descriptors, sanitised.
4. Elements the table does not list: PN, UR and untyped (UN) public elements are removed,
   UIDs other than registered DICOM UIDs are remapped, overlay groups (60xx) are removed
   whole, sequences are walked, the rest is kept with text values sanitised.
5. File meta keeps only version, SOP class, SOP instance and transfer syntax: the Media
   Storage SOP Instance UID is set to the new SOP Instance UID, the implementation
   identifiers name pydicom (which writes the new file), AE titles and addresses go.
   The 128-byte preamble is zeroed (dual-format files hide a TIFF header there).
6. The result is marked: Patient Identity Removed YES, Longitudinal Temporal Information
   Modified MODIFIED (date_shift) or REMOVED, De-identification Method (profile, edition,
   options; no identifiers) and its code sequence from CID 7050.

Empty values stay empty: they carry nothing, and a dummy would invent content.
``FileDataset.filename`` (a Python attribute, never written) is left for deferred pixel
reads; like any source path it must not be logged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from medssl.deid.actions import (
    STRING_VRS,
    Action,
    as_text,
    dummy_value,
    planned_action,
    remap_uid,
    sanitize_text,
    untabled_action,
)
from medssl.deid.dates import shift_da, shift_dt
from medssl.deid.pseudonym import Pseudonymizer
from medssl.deid.table import PROFILE_EDITION, row_for_tag
from medssl.errors import ConfigError, IngestError
from medssl.types import RejectReason

MAX_SEQUENCE_DEPTH = 32
_FILE_META_KEPT = frozenset({0x00020000, 0x00020001, 0x00020002, 0x00020003, 0x00020010})
_BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
_MODIFIED_DATES_CODE = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
_SAFE_PRIVATE_CODE = ("113111", "Retain Safe Private Option")


@dataclass(frozen=True)
class DeidOptions:
    """Choices beyond the Basic Profile.

    ``keep_private`` lists (private creator, element offset 0x00-0xFF) pairs to keep, e.g.
    ``("SIEMENS MR HEADER", 0x0C)`` keeps (0019,xx0C) wherever that creator owns block xx.
    """

    date_shift: bool = False
    keep_private: frozenset[tuple[str, int]] = frozenset()
    keep_descriptions: bool = False

    def __post_init__(self) -> None:
        pairs = set()
        for item in self.keep_private:
            if not (
                isinstance(item, tuple)
                and len(item) == 2
                and isinstance(item[0], str)
                and isinstance(item[1], int)
                and 0 <= item[1] <= 0xFF
            ):
                raise ConfigError(
                    f"keep_private entry {item!r}: expected (private creator, offset 0-255)"
                )
            pairs.add((item[0].strip(), item[1]))
        object.__setattr__(self, "keep_private", frozenset(pairs))


@dataclass(frozen=True)
class _Context:
    pseudo: Pseudonymizer
    options: DeidOptions
    shift_days: int


def deidentify(ds: Dataset, pseudo: Pseudonymizer, options: DeidOptions = DeidOptions()) -> Dataset:
    """De-identify ``ds`` in place (data set, nested sequences, file meta) and return it."""
    days = pseudo.date_shift_days(_text(ds.get("PatientID"))) if options.date_shift else 0
    ctx = _Context(pseudo, options, days)
    _walk(ds, ctx, depth=0)
    if getattr(ds, "file_meta", None) is not None:
        _file_meta(ds, ctx)
    if getattr(ds, "preamble", None):
        ds.preamble = b"\x00" * 128
    _mark(ds, options)
    return ds


def method_description(options: DeidOptions) -> list[str]:
    """The De-identification Method values: profile, edition and options, no identifiers."""
    values = [f"DICOM PS3.15 {PROFILE_EDITION} Basic Profile (medssl)"]
    if options.date_shift:
        values.append("Retain Longitudinal Modified Dates (per-patient day shift)")
    if options.keep_private:
        values.append(f"Retain Safe Private ({len(options.keep_private)} allow-listed)")
    if options.keep_descriptions:
        values.append("Descriptions kept, sanitised (not a PS3.15 option)")
    return values


def _walk(ds: Dataset, ctx: _Context, depth: int) -> None:
    if depth > MAX_SEQUENCE_DEPTH:
        raise IngestError(
            RejectReason.MALFORMED, f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels"
        )
    patient_id = _text(ds.get("PatientID"))  # read before PatientID itself is replaced
    _private(ds, ctx, depth)
    opts = ctx.options
    for tag in list(ds.keys()):
        if tag.is_private:
            continue  # settled by _private
        try:
            elem = ds[tag]  # converts the raw bytes; a malformed value raises here
        except Exception:  # a value that cannot be read cannot be vetted: it does not survive
            del ds[tag]
            continue
        row = row_for_tag(tag)
        if row is not None:
            action = planned_action(
                row, elem.VR, date_shift=opts.date_shift, keep_descriptions=opts.keep_descriptions
            )
        else:
            action = untabled_action(int(tag), elem.VR, date_shift=opts.date_shift)
        _apply(ds, tag, elem, action, ctx, depth, patient_id)


def _apply(
    ds: Dataset,
    tag: BaseTag,
    elem: DataElement,
    action: Action,
    ctx: _Context,
    depth: int,
    patient_id: str,
) -> None:
    vr = elem.VR
    if action is Action.REMOVE:
        del ds[tag]
    elif action is Action.EMPTY:
        elem.value = _empty(vr)
    elif action is Action.RECURSE:
        for item in elem.value or []:
            _walk(item, ctx, depth + 1)
    elif action is Action.PATIENT:
        own = patient_id if elem.keyword == "PatientName" else _text(elem.value)
        elem.value = ctx.pseudo.token(own, "patient") if own else ""
    elif elem.is_empty:
        return  # nothing to hide, and a dummy would invent content
    elif action is Action.KEEP:
        _sanitize(elem)
    elif action is Action.UID:
        elem.value = _map(elem.value, lambda v: remap_uid(v, ctx.pseudo))
    elif action is Action.SHIFT:
        shift = shift_da if vr == "DA" else shift_dt
        elem.value = _map(elem.value, lambda v: shift(v, ctx.shift_days) or "")
    elif action is Action.DUMMY:
        value = dummy_value(vr, elem.value, f"D:{elem.keyword}", ctx.pseudo)
        elem.value = _empty(vr) if value is None else value


def _private(ds: Dataset, ctx: _Context, depth: int) -> None:
    """Remove private elements and creators except allow-listed (creator, offset) pairs."""
    creators: dict[tuple[int, int], str] = {}
    for tag in ds.keys():
        if tag.is_private_creator:
            creators[(tag.group, tag.element)] = _creator_text(ds[tag].value)
    kept_blocks = set()
    for tag in list(ds.keys()):
        if not tag.is_private or tag.is_private_creator:
            continue
        block = (tag.group, tag.element >> 8)
        creator = creators.get(block) if tag.element >= 0x1000 else None
        if creator is None or (creator, tag.element & 0xFF) not in ctx.options.keep_private:
            del ds[tag]
            continue
        try:
            elem = ds[tag]
        except Exception:  # unreadable, so it cannot be vetted even when allow-listed
            del ds[tag]
            continue
        kept_blocks.add(block)
        if elem.VR == "SQ":
            for item in elem.value or []:
                _walk(item, ctx, depth + 1)
        elif not elem.is_empty:
            _sanitize(elem)
    for block in creators:
        if block not in kept_blocks:
            del ds[Tag(*block)]


def _file_meta(ds: Dataset, ctx: _Context) -> None:
    meta = ds.file_meta
    original = _text(meta.get("MediaStorageSOPInstanceUID"))
    for tag in list(meta.keys()):
        if int(tag) not in _FILE_META_KEPT:
            del meta[tag]
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    elif original:
        meta.MediaStorageSOPInstanceUID = remap_uid(original, ctx.pseudo)
    if "MediaStorageSOPClassUID" in meta:
        meta.MediaStorageSOPClassUID = remap_uid(_text(meta.MediaStorageSOPClassUID), ctx.pseudo)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]


def _mark(ds: Dataset, options: DeidOptions) -> None:
    # Earlier method values are replaced, not appended: they are free text of unknown origin.
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if options.date_shift else "REMOVED"
    ds.DeidentificationMethod = method_description(options)
    codes = [_BASIC_PROFILE_CODE]
    if options.date_shift:
        codes.append(_MODIFIED_DATES_CODE)
    if options.keep_private:
        codes.append(_SAFE_PRIVATE_CODE)
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = items


def _sanitize(elem: DataElement) -> None:
    """Sanitise a kept string element, rewriting it only when something had to go."""
    if elem.VR not in STRING_VRS:
        return
    values = elem.value if isinstance(elem.value, (list, tuple, MultiValue)) else [elem.value]
    before = [_str(v) for v in values]
    after = [sanitize_text(v) for v in before]
    if after != before:
        elem.value = after if len(after) > 1 else after[0]


def _map(value: Any, fn: Callable[[str], str]) -> Any:
    """Apply ``fn`` to each value of a single- or multi-valued string element."""
    if isinstance(value, (list, tuple, MultiValue)):
        return [fn(_str(v)) for v in value]
    return fn(_str(value))


def _str(value: Any) -> str:
    # pydicom's DA/DT/TM objects (config.datetime_conversion) remember the text they came from
    original = getattr(value, "original_string", None)
    if isinstance(original, str):
        return original
    if isinstance(value, (bytes, bytearray)):  # text pydicom could not decode
        return bytes(value).decode("latin-1")
    return str(value)


def _empty(vr: str) -> Any:
    if vr == "SQ":
        return []
    if vr in STRING_VRS or vr == "UI":
        return ""
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN"):
        return b""
    return None


def _text(value: Any) -> str:
    if isinstance(value, DataElement):
        value = value.value
    return as_text(value).strip()


def _creator_text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    return str(value).strip().rstrip("\x00").strip()
