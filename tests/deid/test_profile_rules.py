"""Rule by rule: every table attribute at every depth, options, markers, private tags."""

from __future__ import annotations

import copy

import pytest
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medssl.deid import DeidOptions, deidentify, profile_rows
from medssl.deid.actions import Action, planned_action
from medssl.errors import ConfigError, IngestError
from medssl.types import RejectReason
from tests.deid.builders import CANARY, canary_item
from tests.deid.conftest import load

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

_VALUES = {
    "AE": "NODE1", "AS": "030Y", "CS": "VALUE", "DA": "20010203", "DS": "1.5",
    "DT": "20010203101112", "FD": 1.5, "FL": 1.5, "IS": "7", "LO": "long text",
    "LT": "long text", "OB": b"\x01\x02\x03\x04", "OW": b"\x01\x02", "PN": "Doe^Jane",
    "SH": "short", "SL": -1, "SS": -1, "ST": "text", "TM": "101112", "UC": "text",
    "UI": "1.2.826.0.1.3680043.99.5", "UL": 1, "UR": "http://x", "US": 1, "UT": "text",
}


def _table_attributes() -> list[tuple[str, str]]:
    out = []
    for row in profile_rows():
        if row.repeating or row.tag[1:5] in ("0000", "0002", "FFFA", "FFFC"):
            continue
        vr = dictionary_VR(keyword_dict[row.keyword]).split(" or ")[0]
        out.append((row.keyword, vr))
    return out


def _fill(ds: Dataset) -> Dataset:
    for keyword, vr in _table_attributes():
        value = Sequence([canary_item()]) if vr == "SQ" else _VALUES[vr]
        ds.add_new(keyword_dict[keyword], vr, value)
    return ds


def _check(level: Dataset, original: Dataset, options: DeidOptions, where: str) -> set[Action]:
    rows = {r.keyword: r for r in profile_rows()}
    seen = set()
    for keyword, vr in _table_attributes():
        expected = planned_action(
            rows[keyword],
            vr,
            date_shift=options.date_shift,
            keep_descriptions=options.keep_descriptions,
        )
        label = f"{keyword} ({vr}, {rows[keyword].basic}) {where}: expected {expected}"
        seen.add(expected)
        before = original[keyword].value
        if expected is Action.REMOVE:
            assert keyword not in level, label
            continue
        elem = level[keyword]
        if expected is Action.EMPTY:
            assert elem.is_empty, label
        elif expected is Action.DUMMY:
            assert not elem.is_empty and elem.value != before, label
        elif expected is Action.UID:
            assert str(elem.value).startswith("2.25."), label
        elif expected is Action.SHIFT:
            assert len(elem.value) == len(before) and elem.value != before, label
        elif expected is Action.KEEP:
            assert elem.value == before, label
        elif expected is Action.RECURSE:
            (item,) = elem.value
            assert item.ReferencedSOPInstanceUID.startswith("2.25."), label
            assert CANARY not in str(item.get("InstitutionName", "")), label
        elif expected is Action.PATIENT:
            assert len(elem.value) == 16 and str(elem.value) != str(before), label
    return seen


@pytest.mark.parametrize(
    "options",
    [DeidOptions(), DeidOptions(date_shift=True), DeidOptions(keep_descriptions=True)],
    ids=["basic", "date_shift", "keep_descriptions"],
)
def test_every_table_attribute_gets_its_action_at_every_depth(pseudo, options):
    ds = _fill(Dataset())
    inner = _fill(Dataset())
    middle = Dataset()
    middle.ReferencedInstanceSequence = Sequence([inner])  # not in the table: walked
    ds.ReferencedSeriesSequence = Sequence([middle])
    original = _fill(Dataset())
    deidentify(ds, pseudo, options)
    seen = _check(ds, original, options, "at depth 0")
    nested = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert _check(nested, original, options, "at depth 2") == seen
    assert {Action.REMOVE, Action.EMPTY, Action.DUMMY, Action.UID, Action.PATIENT} <= seen
    assert (Action.SHIFT in seen) == options.date_shift
    assert (Action.KEEP in seen) == (options.date_shift or options.keep_descriptions)


@pytest.mark.parametrize(
    ("code", "vr", "expected"),
    [
        ("X/Z", "LO", Action.EMPTY),
        ("Z/D", "DA", Action.DUMMY),
        ("X/D", "LO", Action.DUMMY),
        ("X/Z/D", "PN", Action.DUMMY),
        ("X/Z/D", "SQ", Action.EMPTY),  # no safe dummy item exists
        ("D", "SQ", Action.EMPTY),
        ("X/Z/U*", "SQ", Action.RECURSE),
        ("U", "UI", Action.UID),
    ],
)
def test_combined_codes_resolve_to_the_documented_choice(code, vr, expected):
    row = next(r for r in profile_rows() if r.basic == code and not r.clean_descriptors)
    assert planned_action(row, vr, date_shift=False, keep_descriptions=False) is expected


def test_patient_id_and_name_become_one_patient_token(pseudo):
    ds = load("CT_small.dcm")
    original = ds.PatientID
    deidentify(ds, pseudo, DeidOptions())
    assert ds.PatientID == str(ds.PatientName) == pseudo.token(original, "patient")


def test_nested_patient_name_without_a_patient_id_is_emptied(pseudo):
    ds = load("CT_small.dcm")
    item = Dataset()
    item.PatientName = "Other^Person"
    ds.ReferencedSeriesSequence = Sequence([item])
    deidentify(ds, pseudo, DeidOptions())
    assert ds.ReferencedSeriesSequence[0].PatientName == ""


def test_uid_references_stay_consistent_across_instances_and_file_meta(pseudo):
    first, second = load("CT_small.dcm"), load("CT_small.dcm")
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.99.7"
    ref = Dataset()
    ref.ReferencedSOPClassUID = first.SOPClassUID
    ref.ReferencedSOPInstanceUID = first.SOPInstanceUID
    second.ReferencedImageSequence = Sequence([ref])
    for ds in (first, second):
        deidentify(ds, pseudo, DeidOptions())
    assert first.StudyInstanceUID == second.StudyInstanceUID
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert second.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert second.ReferencedImageSequence[0].ReferencedSOPClassUID == first.SOPClassUID
    for ds in (first, second):
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert "SourceApplicationEntityTitle" not in ds.file_meta


def test_date_shift_is_one_offset_per_patient(pseudo):
    a, b = load("CT_small.dcm"), load("CT_small.dcm")
    b.StudyDate, b.SeriesDate = "20050301", "20050302"
    days = pseudo.date_shift_days(a.PatientID)
    for ds in (a, b):
        deidentify(ds, pseudo, DeidOptions(date_shift=True))
    assert (a.StudyDate, a.SeriesDate) == _shifted(["20040119", "19970430"], days)
    assert (b.StudyDate, b.SeriesDate) == _shifted(["20050301", "20050302"], days)
    assert a.InstanceCreationDate == _shifted(["20040119"], days)[0]  # untabled dates too
    assert a.StudyTime == "072730" and a.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [c.CodeValue for c in a.DeidentificationMethodCodeSequence] == ["113100", "113107"]


def test_different_patients_get_their_own_offsets(pseudo):
    ids = [f"P{i}" for i in range(20)]
    assert len({pseudo.date_shift_days(i) for i in ids}) > 1
    ds = load("CT_small.dcm")
    ds.PatientID = ids[0]
    deidentify(ds, pseudo, DeidOptions(date_shift=True))
    assert ds.StudyDate == _shifted(["20040119"], pseudo.date_shift_days(ids[0]))[0]


def _shifted(dates: list[str], days: int) -> tuple[str, ...]:
    import datetime as dt

    return tuple(
        (dt.datetime.strptime(d, "%Y%m%d").date() + dt.timedelta(days=days)).strftime("%Y%m%d")
        for d in dates
    )


def test_without_date_shift_dates_are_emptied_or_dummy_and_marked_removed(pseudo):
    ds = deidentify(load("CT_small.dcm"), pseudo, DeidOptions())
    assert ds.StudyDate == "" and ds.SeriesDate == "19000101" and ds.ContentDate == "19000101"
    assert ds.InstanceCreationDate == "19000101" and ds.InstanceCreationTime == "072731"
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"


def test_markers_name_profile_edition_and_options_only(pseudo):
    options = DeidOptions(
        date_shift=True, keep_private=frozenset({("ACME", 1)}), keep_descriptions=True
    )
    ds = load("CT_small.dcm")
    deidentify(ds, pseudo, options)
    assert ds.PatientIdentityRemoved == "YES"
    method = list(ds.DeidentificationMethod)
    assert "2024b" in method[0] and len(method) == 4 and all(len(v) <= 64 for v in method)
    assert "ACME" not in " ".join(method)
    codes = [(c.CodeValue, c.CodingSchemeDesignator) for c in ds.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM"), ("113107", "DCM"), ("113111", "DCM")]


def test_private_tags_go_unless_allow_listed_at_any_depth(pseudo):
    ds = load("MR_small.dcm")
    block = ds.private_block(0x0029, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "keep/me")
    block.add_new(0x02, "LO", CANARY)
    item = Dataset()
    nested = item.private_block(0x0029, "ACME 1.0", create=True)
    nested.add_new(0x01, "DS", "2.5")
    nested.add_new(0x03, "LO", CANARY)
    ds.ReferencedSeriesSequence = Sequence([item])
    deidentify(ds, pseudo, DeidOptions(keep_private=frozenset({("ACME 1.0 ", 0x01)})))
    kept = ds.private_block(0x0029, "ACME 1.0")
    assert kept[0x01].value == "keep_me" and 0x02 not in kept
    assert item.private_block(0x0029, "ACME 1.0")[0x01].value == "2.5"
    assert [t for t in ds.keys() if t.is_private and t.group != 0x0029] == []
    assert sorted(int(t) for t in ds.keys() if t.group == 0x0029) == [0x00290010, 0x00291001]


def test_without_allow_list_no_private_element_or_creator_survives(pseudo):
    ds = load("CT_small.dcm")  # GE private blocks in (0009), (0011), (0019), (0021), ...
    assert len([t for t in ds.keys() if t.is_private]) > 50
    deidentify(ds, pseudo, DeidOptions())
    assert [t for t in ds.keys() if t.is_private] == []


def test_untabled_person_names_urls_and_overlay_groups_go_at_any_depth(pseudo):
    ds = load("CT_small.dcm")
    ds.EvaluatorName = CANARY
    ds.add_new(0x60000010, "US", 128)  # Overlay Rows: whole overlay group goes
    ds.add_new(0x50000005, "US", 1)  # Curve Dimensions
    item = Dataset()
    item.SecondaryReviewerName = CANARY
    item.RetrieveURL = "https://pacs.example/wado"
    ds.ReferencedSeriesSequence = Sequence([item])
    deidentify(ds, pseudo, DeidOptions())
    assert "EvaluatorName" not in ds and 0x60000010 not in ds and 0x50000005 not in ds
    assert "SecondaryReviewerName" not in item and "RetrieveURL" not in item
    assert ds.Manufacturer == "GE MEDICAL SYSTEMS"  # untabled, not a name: kept
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]


def test_content_sequence_free_text_is_emptied_not_walked(pseudo):
    ds = load("CT_small.dcm")
    item = Dataset()
    item.TextValue = CANARY
    ds.ContentSequence = Sequence([item])
    deidentify(ds, pseudo, DeidOptions())
    assert len(ds.ContentSequence) == 0


def test_keep_descriptions_keeps_them_sanitised(pseudo):
    plain, kept = load("CT_small.dcm"), load("CT_small.dcm")
    for ds in (plain, kept):
        ds.SeriesDescription = "CT HEAD W/O"
    deidentify(plain, pseudo, DeidOptions())
    deidentify(kept, pseudo, DeidOptions(keep_descriptions=True))
    assert "SeriesDescription" not in plain and "StudyDescription" not in plain
    assert kept.SeriesDescription == "CT HEAD W_O" and kept.StudyDescription == "e+1"


def test_empty_values_stay_empty(pseudo):
    ds = load("CT_small.dcm")
    ds.ContentDate = ""
    ds.InstitutionName = ""
    deidentify(ds, pseudo, DeidOptions())
    assert ds.ContentDate == "" and ds.InstitutionName == ""


def test_absurd_nesting_is_refused_as_malformed(pseudo):
    ds = inner = Dataset()
    for _ in range(40):
        nxt = Dataset()
        inner.ReferencedSeriesSequence = Sequence([nxt])
        inner = nxt
    with pytest.raises(IngestError) as err:
        deidentify(ds, pseudo, DeidOptions())
    assert err.value.code is RejectReason.MALFORMED


def test_preamble_is_zeroed_and_object_returned_in_place(pseudo):
    ds = load("CT_small.dcm")
    ds.preamble = b"II*\x00" + b"\x01" * 124  # a TIFF header hidden in a dual-format file
    assert deidentify(ds, pseudo, DeidOptions()) is ds
    assert ds.preamble == b"\x00" * 128


def test_dataset_without_file_meta_is_fine(pseudo):
    ds = Dataset()
    ds.PatientID = "123"
    ds.SOPInstanceUID = "1.2.3.4"
    deidentify(ds, pseudo, DeidOptions())
    assert ds.SOPInstanceUID == pseudo.uid("1.2.3.4")
    assert ds.PatientID == pseudo.token("123", "patient")


@pytest.mark.parametrize("bad", [("ACME", 256), ("ACME",), (1, 2), "ACME"])
def test_bad_allow_list_entries_are_refused(bad):
    with pytest.raises(ConfigError):
        DeidOptions(keep_private=frozenset({bad}))


def test_options_are_immutable_and_copyable():
    options = DeidOptions(keep_private=frozenset({(" ACME ", 3)}))
    assert options.keep_private == frozenset({("ACME", 3)})
    with pytest.raises(AttributeError):
        options.date_shift = True  # type: ignore[misc]
    assert copy.deepcopy(options) == options


def test_values_that_cannot_be_read_are_dropped_not_passed_through(pseudo):
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = load("CT_small.dcm")
    tag = Tag(0x00181318)  # dB/dt, FD: 3 bytes cannot be a double
    ds._dict[tag] = RawDataElement(tag, "FD", 3, b"\x01\x02\x03", 0, False, True)
    deidentify(ds, pseudo, DeidOptions())
    assert tag not in ds and ds.Rows == 128
