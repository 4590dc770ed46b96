"""Table E.1-1 as data: complete enough, consistent with pydicom's dictionary."""

from __future__ import annotations

from collections import Counter

from pydicom.datadict import RepeatersDictionary, keyword_for_tag, tag_for_keyword

from medssl.deid import PROFILE_EDITION, profile_rows
from medssl.deid.table import BASIC_CODES, row_for_tag


def test_edition_is_pinned():
    assert PROFILE_EDITION == "2024b"


def test_table_has_at_least_250_rows():
    assert len(profile_rows()) >= 250


def test_tags_and_keywords_are_unique():
    rows = profile_rows()
    assert not [t for t, n in Counter(r.tag for r in rows).items() if n > 1]
    assert not [k for k, n in Counter(r.keyword for r in rows).items() if n > 1]


def test_every_keyword_is_pydicoms_keyword_for_its_tag():
    for row in profile_rows():
        if row.repeating:
            masks = [m for m, entry in RepeatersDictionary.items() if entry[4] == row.keyword]
            assert masks, row
            concrete = int(masks[0].lower().replace("x", "0"), 16)
            assert row.matches(concrete), row
            assert keyword_for_tag(concrete) == row.keyword, row
        else:
            tag = int(row.tag.strip("()").replace(",", ""), 16)
            assert keyword_for_tag(tag) == row.keyword, row
            assert tag_for_keyword(row.keyword) == tag, row


def test_codes_are_the_standards_codes():
    assert {r.basic for r in profile_rows()} <= BASIC_CODES
    assert {"X/Z/U*", "X/Z/D", "Z/D", "X/D", "X/Z", "U", "D", "Z", "X"} <= {
        r.basic for r in profile_rows()
    }


def test_key_attributes_carry_the_standards_code():
    expected = {
        "PatientName": "Z",
        "PatientID": "Z",
        "PatientBirthDate": "Z",
        "PatientAddress": "X",
        "OtherPatientIDsSequence": "X",
        "AccessionNumber": "Z",
        "StudyInstanceUID": "U",
        "SeriesInstanceUID": "U",
        "SOPInstanceUID": "U",
        "MediaStorageSOPInstanceUID": "U",
        "FrameOfReferenceUID": "U",
        "ReferencedSOPInstanceUID": "U",
        "InstitutionName": "X/Z/D",
        "OperatorsName": "X/Z/D",
        "ReferringPhysicianName": "Z",
        "PerformingPhysicianName": "X",
        "StudyDate": "Z",
        "SeriesDate": "X/D",
        "ContentDate": "Z/D",
        "AcquisitionDateTime": "X/Z/D",
        "ReferencedImageSequence": "X/Z/U*",
        "SourceImageSequence": "X/Z/U*",
        "ReferencedStudySequence": "X/Z",
        "RequestAttributesSequence": "X",
        "ContentSequence": "D",
        "VerifyingObserverName": "D",
        "StudyDescription": "X",
        "ImageComments": "X",
        "DeviceSerialNumber": "X/Z/D",
        "StationName": "X/Z/D",
    }
    by_keyword = {r.keyword: r.basic for r in profile_rows()}
    assert {k: by_keyword.get(k) for k in expected} == expected


def test_option_columns_mark_dates_and_descriptions():
    by_keyword = {r.keyword: r for r in profile_rows()}
    assert by_keyword["StudyDate"].modified_dates
    assert not by_keyword["PatientBirthDate"].modified_dates
    assert by_keyword["SeriesDescription"].clean_descriptors
    assert not by_keyword["PatientName"].clean_descriptors


def test_lookup_by_tag_handles_repeating_groups():
    assert row_for_tag(0x00100010).keyword == "PatientName"
    assert row_for_tag(0x60023000).keyword == "OverlayData"
    assert row_for_tag(0x601E4000).keyword == "OverlayComments"
    assert row_for_tag(0x50101234).keyword == "CurveData"
    assert row_for_tag(0x60020010) is None  # Overlay Rows: not in the table
    assert row_for_tag(0x00080070) is None  # Manufacturer
