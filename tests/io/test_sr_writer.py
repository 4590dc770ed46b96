"""DICOM SR (TID 1500) writer: one volumetric ROI group per detection, LPS coordinates."""

from __future__ import annotations

import copy
import math

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medssl.io.seg_writer import MEDSSL_MANUFACTURER
from medssl.io.sr_writer import PRIVATE_SCHEME, box_to_lps, write_dicom_sr
from tools.phantom import make_ct_phantom, write_ct_series

DETECTIONS = [
    {
        "label": "nodule",
        "score": 0.9,
        "box_min_ras_mm": [-10.0, 5.0, 20.0],
        "box_max_ras_mm": [0.0, 15.0, 32.0],
    },
    {
        "label": "cyst, simple",
        "score": 0.25,
        "box_min_ras_mm": [12.5, -40.0, -3.0],
        "box_max_ras_mm": [20.5, -30.0, 1.0],
    },
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    phantom = make_ct_phantom((16, 16, 8), (4.0, 4.0, 5.0), seed=1, n_lesions=0)
    paths = write_ct_series(phantom, tmp_path_factory.mktemp("ct"), orientation="coronal")
    return [pydicom.dcmread(p) for p in paths]


def _write(tmp_path, detections, sources, **kwargs):
    out = write_dicom_sr(
        detections,
        sources,
        tmp_path / "sr.dcm",
        algorithm_name="detector",
        algorithm_version="0.3",
        **kwargs,
    )
    return hd.sr.srread(out)


def test_groups_coordinates_and_measurements(tmp_path, sources):
    sr = _write(tmp_path, DETECTIONS, sources[::-1])
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(DETECTIONS)
    for group, det in zip(groups, DETECTIONS, strict=True):
        points = np.asarray(group.roi.graphic_data, dtype=float).reshape(
            -1, 3
        )  # ELLIPSOID: 6 points
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues3D.ELLIPSOID
        lo = np.array(det["box_min_ras_mm"]) * [-1, -1, 1]
        hi = np.array(det["box_max_ras_mm"]) * [-1, -1, 1]
        np.testing.assert_allclose(points.min(axis=0), np.minimum(lo, hi), atol=1e-3)
        np.testing.assert_allclose(points.max(axis=0), np.maximum(lo, hi), atol=1e-3)
        np.testing.assert_allclose(points.mean(axis=0), (lo + hi) / 2, atol=1e-3)
        assert group.roi.frame_of_reference_uid == sources[0].FrameOfReferenceUID
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        edges = np.abs(hi - lo)
        assert values["Diameter"] == pytest.approx(edges.max())
        assert values["Volume"] == pytest.approx(math.pi / 6 * edges.prod())
        assert values["Probability"] == pytest.approx(det["score"])
        assert group.finding_type.scheme_designator == PRIVATE_SCHEME
        assert group.finding_type.meaning == det["label"]


def test_references_the_source_series_and_study(tmp_path, sources):
    sr = _write(tmp_path, DETECTIONS[:1], sources)
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == sources[0].StudyInstanceUID
    (series,) = evidence.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence} == {
        ds.SOPInstanceUID for ds in sources
    }
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID
    assert sr.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert sr.Manufacturer == MEDSSL_MANUFACTURER
    assert sr.SeriesDescription.startswith(MEDSSL_MANUFACTURER)


def test_no_detections_is_refused(tmp_path, sources):
    # TID 1500 needs at least one measurement group; the caller sends no SR instead
    with pytest.raises(ValueError, match="detections is empty"):
        _write(tmp_path, [], sources)


def test_finding_codes_override_the_private_scheme(tmp_path, sources):
    nodule = hd.sr.CodedConcept("27925004", "SCT", "Nodule")
    sr = _write(tmp_path, DETECTIONS[:1], sources, finding_codes={"nodule": nodule})
    (group,) = sr.content.get_volumetric_roi_measurement_groups()
    assert group.finding_type == nodule


def test_box_to_lps_negates_x_and_y():
    lps = box_to_lps([1.0, 2.0, 3.0], [4.0, 6.0, 9.0])
    np.testing.assert_array_equal(lps, [[-4.0, -6.0, 3.0], [-1.0, -2.0, 9.0]])


@pytest.mark.parametrize(
    ("detection", "message"),
    [
        ({"label": "x", "score": 0.5, "box_min_ras_mm": [0, 0, 0]}, "lacks \\['box_max_ras_mm'\\]"),
        ({**DETECTIONS[0], "score": 1.5}, "score must be in \\[0, 1\\]"),
        ({**DETECTIONS[0], "score": "high"}, "detection 0"),
        ({**DETECTIONS[0], "box_max_ras_mm": [0, 15, 20]}, "must exceed"),
        ({**DETECTIONS[0], "box_min_ras_mm": [0, 0]}, "3 numbers each"),
        ({**DETECTIONS[0], "box_min_ras_mm": [0, float("nan"), 0]}, "finite"),
    ],
    ids=["missing-key", "score-range", "score-type", "empty-box", "short-corner", "nan"],
)
def test_bad_detection_raises(tmp_path, sources, detection, message):
    with pytest.raises(ValueError, match=message):
        _write(tmp_path, [detection], sources)
    assert not (tmp_path / "sr.dcm").exists()


def test_bad_sources_raise(tmp_path, sources):
    with pytest.raises(ValueError, match="empty"):
        _write(tmp_path, DETECTIONS, [])
    other = copy.deepcopy(sources[0])
    other.SeriesInstanceUID = hd.UID()
    with pytest.raises(ValueError, match="span 2 series"):
        _write(tmp_path, DETECTIONS, [sources[0], other])
