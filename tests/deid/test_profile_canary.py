"""Nothing identifying survives: canaries, original UIDs and dates, malformed values.

The canary is planted in every text attribute Table E.1-1 governs, in a sequence item
under every table sequence, in untabled person names, in private blocks at two depths and
in overlay/curve groups; the de-identified object is written to bytes and searched.
Elements the table does not govern (Manufacturer, Image Type, ...) are kept by design.
"""

from __future__ import annotations

import copy
import re

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medssl.deid import DeidOptions, deidentify
from medssl.deid.actions import STRING_VRS
from tests.deid.builders import (
    CANARY,
    original_dates,
    original_uids,
    plant_everywhere,
    to_bytes,
)

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

OPTION_SETS = [
    DeidOptions(),
    DeidOptions(date_shift=True),
    DeidOptions(keep_private=frozenset({("SOME OTHER CREATOR", 0x01)})),
]


@pytest.mark.parametrize("options", OPTION_SETS, ids=["basic", "date_shift", "allow_list"])
def test_canary_appears_nowhere_in_the_written_file(real_ds, pseudo, options):
    plant_everywhere(real_ds)
    assert CANARY.encode() in to_bytes(real_ds)  # the test would catch a leak
    data = to_bytes(deidentify(real_ds, pseudo, options))
    assert CANARY.encode() not in data.upper()


def test_no_original_uid_survives_anywhere(real_ds, pseudo):
    plant_everywhere(real_ds)
    before = original_uids(real_ds)
    assert len(before) >= 6
    data = to_bytes(deidentify(real_ds, pseudo, DeidOptions()))
    assert [u for u in before if u.encode() in data] == []


@pytest.mark.parametrize("date_shift", [False, True])
def test_no_original_date_survives(real_ds, pseudo, date_shift):
    plant_everywhere(real_ds)
    before = original_dates(real_ds)
    assert before
    data = to_bytes(deidentify(real_ds, pseudo, DeidOptions(date_shift=date_shift)))
    assert [d for d in before if d.encode() in data] == []


def test_same_key_twice_gives_identical_bytes(real_ds, pseudo):
    first = to_bytes(deidentify(plant_everywhere(copy.deepcopy(real_ds)), pseudo, DeidOptions()))
    second = to_bytes(deidentify(plant_everywhere(copy.deepcopy(real_ds)), pseudo, DeidOptions()))
    assert first == second


def test_different_keys_give_different_uids(real_ds, pseudo, other_pseudo):
    a = deidentify(copy.deepcopy(real_ds), pseudo, DeidOptions())
    b = deidentify(copy.deepcopy(real_ds), other_pseudo, DeidOptions())
    uids = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"]
    for keyword in uids:
        assert a[keyword].value != b[keyword].value
        assert a[keyword].value.startswith("2.25.")
    assert a.PatientID != b.PatientID


MALICIOUS = {
    "PatientID": "../../etc/passwd",
    "StudyInstanceUID": "../../etc",
    "SeriesInstanceUID": "1.2/../3",
    "AccessionNumber": "..\\..\\boot.ini",
    "StudyID": "\x00\x07id",
    "Manufacturer": "ACME/../x\x00y\x1b[31m",  # untabled: kept, so it must be sanitised
    "ManufacturerModelName": "..",
    "ImageComments": "../../../root/.ssh",
}


@pytest.mark.parametrize("options", OPTION_SETS[:2], ids=["basic", "date_shift"])
def test_malformed_values_never_survive(real_ds, pseudo, options):
    for keyword, value in MALICIOUS.items():
        setattr(real_ds, keyword, value)
    item = Dataset()
    item.SeriesInstanceUID = "../nested"
    item.ReferencedFileID = ["..", "..", "etc"]
    real_ds.ReferencedSeriesSequence = Sequence([item])
    out = deidentify(real_ds, pseudo, options)
    data = to_bytes(out)
    for needle in [b"../", b"..\\", b"etc/passwd", b"boot.ini", b".ssh", b"\x1b[31m"]:
        assert needle not in data
    for elem in out.iterall():
        if elem.VR in STRING_VRS | {"UI"} and not elem.is_empty:
            values = elem.value if elem.VM > 1 else [elem.value]
            for value in map(str, values):
                assert ".." not in value and "/" not in value and "\\" not in value, elem
                assert not re.search(r"[\x00-\x08\x0b\x0e-\x1f\x7f]", value), elem
    assert out.Manufacturer == "ACME___x_y_[31m"
    assert out.PatientID == pseudo.token("../../etc/passwd", "patient")
