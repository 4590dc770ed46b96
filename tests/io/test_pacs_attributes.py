"""What a SEG/SR carries back to the PACS: the explicit allow-list, checked at every depth.

The source series carries canaries in every attribute a red-team sweep found copied into
the results (free text, age/weight, issuer, the scanner's institution/station/serial): none
may appear in the written bytes; each element of the result, in every sequence item, must be
on the object's list; the identity the PACS files by must be the source's, unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from medssl.io.pacs_attributes import (
    FROM_SOURCE,
    NEVER_CARRIED,
    SEG_ATTRIBUTES,
    SR_ATTRIBUTES,
    keep_allowed,
)
from medssl.io.seg_writer import write_dicom_seg
from medssl.io.sr_writer import write_dicom_sr
from tools.phantom import make_ct_phantom, write_ct_series

CANARIES = {
    "IssuerOfPatientID": "CANARYISSUER",
    "OtherPatientIDs": "CANARYOTHERID",
    "PatientAge": "042Y",
    "PatientWeight": "77.7",
    "PatientAddress": "CANARY STREET 1",
    "PatientComments": "CANARY free text about the patient",
    "AdditionalPatientHistory": "CANARY history",
    "StudyDescription": "CANARY STUDY DESCRIPTION",
    "InstitutionName": "CANARY HOSPITAL",
    "InstitutionAddress": "CANARY ROAD 9",
    "InstitutionalDepartmentName": "CANARY DEPT",
    "StationName": "CANARYSTN",
    "DeviceSerialNumber": "CANARYSERIAL",
    "OperatorsName": "CANARY^OPERATOR",
    "PerformingPhysicianName": "CANARY^PERFORMER",
    "PositionReferenceIndicator": "CANARYPRI",
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Dataset]:
    phantom = make_ct_phantom((16, 16, 8), (4.0, 4.0, 5.0), seed=3, n_lesions=1)
    paths = write_ct_series(phantom, tmp_path_factory.mktemp("ct"))
    datasets = [pydicom.dcmread(p) for p in paths]
    for ds in datasets:
        for keyword, value in CANARIES.items():
            setattr(ds, keyword, value)
        ds.add_new(0x00431001, "LO", "CANARY private")  # a vendor's private element
    return datasets


@pytest.fixture(scope="module")
def seg(sources, tmp_path_factory):
    labels = np.zeros((16, 16, 8), dtype=np.uint8)
    labels[4:9, 4:9, 2:5] = 1
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    write_dicom_seg(labels, sources, {1: "lesion"}, path, algorithm_name="a", algorithm_version="1")
    return path


@pytest.fixture(scope="module")
def sr(sources, tmp_path_factory):
    detection = {
        "label": "n",
        "score": 0.5,
        "box_min_ras_mm": (0, 0, 0),
        "box_max_ras_mm": (4, 4, 4),
    }
    path = tmp_path_factory.mktemp("sr") / "sr.dcm"
    write_dicom_sr([detection], sources, path, algorithm_name="a", algorithm_version="1")
    return path


def _walk(ds: Dataset, trail: str = "") -> Iterator[tuple[str, pydicom.DataElement]]:
    for element in ds:
        yield f"{trail}{element.keyword or element.tag}", element
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item, f"{trail}{element.keyword}>")


@pytest.mark.parametrize(("kind", "allowed"), [("seg", SEG_ATTRIBUTES), ("sr", SR_ATTRIBUTES)])
def test_every_element_at_every_depth_is_on_the_list(request, kind, allowed):
    written = pydicom.dcmread(request.getfixturevalue(kind))
    outside = sorted({trail for trail, el in _walk(written) if el.keyword not in allowed})
    assert outside == []


@pytest.mark.parametrize("kind", ["seg", "sr"])
def test_no_canary_reaches_the_written_file(request, kind):
    raw = request.getfixturevalue(kind).read_bytes()
    assert b"CANARY" not in raw
    written = pydicom.dcmread(request.getfixturevalue(kind))
    carried = {el.keyword for _, el in _walk(written)}
    assert not carried & NEVER_CARRIED
    assert "ContributingEquipmentSequence" not in carried


@pytest.mark.parametrize("kind", ["seg", "sr"])
def test_the_pacs_files_it_under_the_source_patient_and_study(request, sources, kind):
    written = pydicom.dcmread(request.getfixturevalue(kind))
    for keyword in FROM_SOURCE - {"FrameOfReferenceUID"}:
        if keyword in sources[0]:
            assert written[keyword].value == sources[0][keyword].value, keyword
    assert written.Manufacturer == "medssl"
    assert written.SeriesInstanceUID != sources[0].SeriesInstanceUID


def test_seg_keeps_its_geometry_and_reads_back(seg, sources):
    read = hd.seg.segread(seg)
    assert read.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert read.DeviceSerialNumber == "none"
    assert read.PositionReferenceIndicator == ""
    assert read.get_segment_numbers() == [1]
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in read.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced <= {str(ds.SOPInstanceUID) for ds in sources}


def test_sr_reads_back_with_its_measurements(sr, sources):
    read = hd.sr.srread(sr)
    groups = read.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 1
    assert read.StudyInstanceUID == sources[0].StudyInstanceUID


def test_no_list_ever_allows_free_text_or_equipment_identity():
    assert not NEVER_CARRIED & SEG_ATTRIBUTES
    assert not NEVER_CARRIED & SR_ATTRIBUTES


def test_keep_allowed_walks_nested_items_and_drops_private_elements():
    inner = Dataset()
    inner.CodeValue, inner.InstitutionName = "1", "X"
    ds = Dataset()
    ds.PatientID, ds.PatientComments = "p", "free text"
    ds.ConceptNameCodeSequence = [inner]
    ds.add_new(0x00091001, "LO", "private")
    keep_allowed(ds, frozenset({"PatientID", "ConceptNameCodeSequence", "CodeValue"}))
    assert [el.keyword for el in ds] == ["PatientID", "ConceptNameCodeSequence"]
    assert [el.keyword for el in ds.ConceptNameCodeSequence[0]] == ["CodeValue"]
