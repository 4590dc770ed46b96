"""Label values are those of the training masks: an artifact trained on 21-23 writes 21-23."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medssl.inference.artifact import ArtifactError, load_artifact, save_artifact
from medssl.inference.predict import ArtifactPredictor
from medssl.inference.predictor import PredictionRequest
from medssl.types import OutputClass
from tests.inference.artifact_builders import ENCODER_KWARGS, phantom_series, segmentation_artifact

NAMES = ["background", "a", "b", "c"]
VALUES = [0, 21, 22, 23]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("values")
    phantom_series(root / "dicom", shape=(40, 40, 16))
    out = {}
    for name, values in (("values", VALUES), ("wide", [0, 300, 7, 1000]), ("old", None)):
        artifact = segmentation_artifact(root / name, labels=NAMES, label_values=values)
        (root / f"out-{name}").mkdir()
        request = PredictionRequest((root / "dicom",), frozenset({"json", "nifti", "seg"}), root / f"out-{name}")
        out[name] = ArtifactPredictor(artifact, device="cpu").predict(request)
    return out


def _labels(result) -> np.ndarray:
    return np.asarray(nib.load(str(result.files["segmentation.nii.gz"])).dataobj)


def test_the_label_map_holds_the_training_values_not_class_indices(runs):
    values, old = _labels(runs["values"]), _labels(runs["old"])
    assert set(np.unique(old)) == {1, 2}  # the head predicts classes 1 and 2 (3 never wins)
    assert set(np.unique(values)) == {21, 22} and values.dtype == np.uint8
    lut = np.array(VALUES)
    assert np.array_equal(values, lut[old])  # the same prediction, in the masks' values


def test_the_summary_lists_every_structure_by_value_and_name(runs):
    structures = runs["values"].summary["segmentation"]["seg"]["structures"]
    assert [(s["value"], s["label"]) for s in structures] == [(21, "a"), (22, "b"), (23, "c")]
    labels = _labels(runs["values"])
    for s in structures:
        assert s["voxels"] == int((labels == s["value"]).sum())
    assert structures[2]["voxels"] == 0
    old = runs["old"].summary["segmentation"]["seg"]["structures"]
    assert [(s["value"], s["label"]) for s in old] == [(1, "a"), (2, "b"), (3, "c")]


def test_values_above_255_give_a_uint16_map(runs):
    labels = _labels(runs["wide"])
    assert labels.dtype == np.uint16 and set(np.unique(labels)) == {300, 7}


def test_the_seg_names_its_segments_by_the_structure_names(runs):
    seg = pydicom.dcmread(runs["values"].files["seg.dcm"])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["a", "b"]


def test_the_artifact_carries_classes_with_their_values(tmp_path):
    artifact = load_artifact(segmentation_artifact(tmp_path / "a", labels=NAMES, label_values=VALUES))
    assert artifact.output_classes == tuple(OutputClass(i, v, n) for i, (v, n) in enumerate(zip(VALUES, NAMES)))
    old = load_artifact(segmentation_artifact(tmp_path / "b", labels=NAMES))
    assert old.label_values is None and [c.value for c in old.output_classes] == [0, 1, 2, 3]
    info = ArtifactPredictor(tmp_path / "a", device="cpu").info
    assert info["labels"] == NAMES and info["label_values"] == VALUES


@pytest.mark.parametrize("values, reason", [
    ([0, 21, 22], "3 label_values for 4 labels"),
    ([0, 21, 21, 23], "distinct"),
    ([0, 21, 22, 70000], "distinct and in 0..65535"),
    (["0", 21, 22, 23], "list of integers"),
])
def test_bad_label_values_are_refused_when_written_and_when_loaded(tmp_path, values, reason):
    from medssl.backbones import create_backbone

    encoder = create_backbone("resenc3d", **ENCODER_KWARGS)
    with pytest.raises(ArtifactError, match=reason):
        save_artifact(tmp_path / "x", backbone_name="resenc3d", backbone_kwargs=ENCODER_KWARGS,
                      state_dict=encoder.state_dict(), labels=NAMES, label_values=values)
    folder = segmentation_artifact(tmp_path / "y", labels=NAMES, label_values=VALUES)
    meta = json.loads((folder / "artifact.json").read_text())
    meta["label_values"] = values
    (folder / "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=reason):
        load_artifact(folder)


def test_a_segmentation_background_with_a_value_is_refused(tmp_path):
    folder = segmentation_artifact(tmp_path / "a", labels=NAMES, label_values=[5, 21, 22, 23])
    with pytest.raises(ArtifactError, match="background .* the value 0"):
        ArtifactPredictor(folder, device="cpu")
