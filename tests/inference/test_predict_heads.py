"""ArtifactPredictor with detection and classification artifacts: JSON, SR, evidence."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from medssl.inference.inputs import read_input
from medssl.inference.predict import load_predictor
from medssl.inference.predictor import PredictionRequest
from tests.inference.artifact_builders import (
    CANARY_ID,
    CANARY_NAME,
    CANARY_SERIES,
    GUIDELINES,
    classification_artifact,
    detection_artifact,
    phantom_series,
    write_lps_nifti,
)

ALL = frozenset({"json", "nifti", "seg", "sr", "png"})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    phantom_series(root / "dicom")
    volume = read_input([root / "dicom"]).volume
    nifti = write_lps_nifti(np.asarray(volume.array), volume.affine, root / "v.nii.gz")
    return {"root": root, "dicom": root / "dicom", "nifti": nifti, "volume": volume}


def _predict(artifact, inputs_, tmp_path, name="dicom"):
    predictor = load_predictor(artifact, device="cpu")
    out = tmp_path / f"out-{name}"
    out.mkdir()
    return predictor.predict(PredictionRequest((inputs_[name],), ALL, out))


def test_detection_gives_world_boxes_and_an_sr_for_dicom(inputs, tmp_path):
    result = _predict(detection_artifact(tmp_path / "det"), inputs, tmp_path)
    found = result.summary["detection"]["det"]
    assert 1 <= len(found) <= 5
    volume = inputs["volume"]
    corners = np.array([[i, j, k] for i in (0, 47) for j in (0, 47) for k in (0, 19)], float)
    world = corners @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    lo, hi = world.min(axis=0) - np.array([2, 2, 3]), world.max(axis=0) + np.array([2, 2, 3])
    scores = [d["score"] for d in found]
    assert scores == sorted(scores, reverse=True)
    for det in found:
        assert det["label"] in ("nodule", "cyst") and 0.0 <= det["score"] <= 1.0
        box_lo, box_hi = np.array(det["box_min_ras_mm"]), np.array(det["box_max_ras_mm"])
        assert np.all(box_lo < box_hi) and np.all(box_lo >= lo - 1e-3) and np.all(box_hi <= hi + 1e-3)
    sr = pydicom.dcmread(result.files["sr.dcm"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == CANARY_SERIES
    assert "png" in " ".join(result.files) and "segmentation.nii.gz" not in result.files
    text = json.dumps(result.summary)
    assert CANARY_NAME not in text and CANARY_ID not in text and CANARY_SERIES not in text


def test_detection_on_nifti_gives_json_without_sr(inputs, tmp_path):
    result = _predict(detection_artifact(tmp_path / "det"), inputs, tmp_path, "nifti")
    assert result.summary["detection"]["det"]
    assert "sr.dcm" not in result.files
    assert "sr: not written, the input was not DICOM" in result.summary["notes"]


def test_classification_gives_probabilities_and_guideline_evidence(inputs, tmp_path):
    result = _predict(classification_artifact(tmp_path / "dx"), inputs, tmp_path)
    dx = result.summary["diagnosis"]["dx"]
    assert set(dx["probabilities"]) == {"normal", "lesion"}
    assert sum(dx["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    best = max(dx["probabilities"], key=dx["probabilities"].get)
    assert dx["predicted"] == [best] and dx["evidence_texts"] is True
    (evidence,) = dx["evidence"]
    assert evidence["class"] == best
    texts = [s["text"] for c in GUIDELINES["classes"] if c["name"] == best for s in c["sentences"]]
    assert sorted(s["text"] for s in evidence["sentences"]) == sorted(texts)
    volume = inputs["volume"]
    for sentence in evidence["sentences"]:
        ijk = np.linalg.inv(volume.affine) @ np.append(sentence["attention_peak_ras_mm"], 1.0)
        assert np.all(ijk[:3] >= -0.5) and np.all(ijk[:3] <= np.array(volume.array.shape) - 0.5)
        assert 0.0 < sentence["attention_peak_weight"] <= 1.0
    assert len(dx["attention_grid"]) == 3
    shares = evidence["path_shares"]  # no linear bypass by default: two decoder paths
    assert set(shares) == {"label_queries", "guideline_queries"}
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5)


def test_classification_without_texts_gives_sentence_indices(inputs, tmp_path):
    artifact = classification_artifact(tmp_path / "dx", with_texts=False)
    result = _predict(artifact, inputs, tmp_path, "nifti")
    dx = result.summary["diagnosis"]["dx"]
    assert dx["evidence_texts"] is False
    sentences = dx["evidence"][0]["sentences"]
    assert all(s["text"] is None and 0 <= s["index"] < 4 for s in sentences)
