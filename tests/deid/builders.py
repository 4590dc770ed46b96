"""Builders for test data sets: canaries planted in every attribute the profile governs."""

from __future__ import annotations

import io

from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medssl.deid import profile_rows

CANARY = "CANARYXYZ"
TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"}
PLANTED_DATE = "20010203"
PLANTED_UID_ROOT = "1.2.826.0.1.3680043.99"
TABLE_KEYWORDS = {r.keyword for r in profile_rows()}


def untabled_pn_keywords() -> list[str]:
    """Person-name attributes Table E.1-1 does not list (removed by medssl's PN rule)."""
    return sorted(
        k for k, t in keyword_dict.items()
        if dictionary_VR(t) == "PN" and k not in TABLE_KEYWORDS
    )


def canary_item() -> Dataset:
    """A sequence item whose every value would leak if the item survived uncleaned."""
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = f"{PLANTED_UID_ROOT}.1000"
    item.OperatorsName = CANARY
    item.InstitutionName = CANARY
    item.StudyDate = PLANTED_DATE
    item.add_new(0x0040A123, "PN", CANARY)  # Person Name
    block = item.private_block(0x0029, f"{CANARY} NESTED", create=True)
    block.add_new(0x01, "LO", CANARY)
    return item


def plant_everywhere(ds: Dataset) -> Dataset:
    """Put a canary in every text attribute of Table E.1-1, dates and UIDs in the others,
    a canary item in every table sequence, a private block, untabled person names, and a
    nested untabled sequence carrying table attributes two levels down."""
    for index, row in enumerate(profile_rows()):
        if row.repeating or row.tag[1:5] in ("0000", "0002", "FFFA", "FFFC"):
            continue
        vr = dictionary_VR(keyword_dict[row.keyword])
        if vr in TEXT_VRS:
            setattr(ds, row.keyword, CANARY)
        elif row.keyword in ds:
            continue  # keep the file's own dates and UIDs: they are the realistic ones
        elif vr == "DA":
            setattr(ds, row.keyword, PLANTED_DATE)
        elif vr == "DT":
            setattr(ds, row.keyword, PLANTED_DATE + "101112")
        elif vr == "UI":
            setattr(ds, row.keyword, f"{PLANTED_UID_ROOT}.{index}")
        elif vr == "SQ":
            setattr(ds, row.keyword, Sequence([canary_item()]))
    # Graphic annotation free text and SR text live deep inside D-coded sequences.
    text_item = Dataset()
    text_item.TextValue = CANARY
    text_item.UnformattedTextValue = CANARY
    ds.ContentSequence = Sequence([text_item])
    for keyword in untabled_pn_keywords():
        setattr(ds, keyword, CANARY)
    block = ds.private_block(0x0031, f"{CANARY} CREATOR", create=True)
    block.add_new(0x01, "LO", CANARY)
    block.add_new(0x02, "UT", CANARY)
    ds.ReferencedSeriesSequence = Sequence([_referenced_series(ds)])
    ds.add_new(0x60000022, "LO", CANARY)  # Overlay Description
    ds.add_new(0x50000022, "LO", CANARY)  # Curve Description
    return ds


def _referenced_series(ds: Dataset) -> Dataset:
    series = Dataset()
    series.SeriesInstanceUID = ds.SeriesInstanceUID
    series.AccessionNumber = CANARY
    series.add_new(0x00321032, "PN", CANARY)  # Requesting Physician
    instance = Dataset()
    instance.ReferencedSOPClassUID = ds.SOPClassUID
    instance.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    instance.RequestAttributesSequence = Sequence([canary_item()])
    instance.ReferencedImageSequence = Sequence([canary_item()])
    series.ReferencedInstanceSequence = Sequence([instance])
    return series


def original_uids(ds: Dataset) -> set[str]:
    """Every non-registered UID in ``ds`` and its file meta, before de-identification."""
    from pydicom.uid import UID_dictionary

    found = set()
    elements = list(ds.iterall()) + list(getattr(ds, "file_meta", Dataset()).iterall())
    for elem in elements:
        if elem.VR == "UI" and elem.value:
            values = elem.value if elem.VM > 1 else [elem.value]
            found.update(str(v) for v in values if str(v) not in UID_dictionary)
    return found


def original_dates(ds: Dataset) -> set[str]:
    found = set()
    for elem in ds.iterall():
        if elem.VR in ("DA", "DT") and elem.value:
            values = elem.value if elem.VM > 1 else [elem.value]
            found.update(str(v)[:8] for v in values if len(str(v)) >= 8)
    return found


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()
