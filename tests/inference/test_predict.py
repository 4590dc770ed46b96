"""ArtifactPredictor with a segmentation artifact: geometry, DICOM SEG, identifiers, refusals."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medssl.inference.artifact import ArtifactError, reseal_artifact
from medssl.inference.inputs import read_input
from medssl.inference.predict import ArtifactPredictor, load_predictor
from medssl.inference.predictor import InputError, PredictionRequest, Predictor
from medssl.io.seg_writer import slice_voxel_indices
from tests.inference.artifact_builders import (
    CANARY_ID,
    CANARY_NAME,
    CANARY_SERIES,
    CANARY_STUDY,
    SEG_LABELS,
    encoder_only_artifact,
    phantom_series,
    segmentation_artifact,
    segmentation_artifact_2d,
    write_lps_nifti,
)

ALL = frozenset({"json", "nifti", "seg", "sr", "png"})


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    series = phantom_series(root / "dicom")
    dicom = read_input([root / "dicom"])
    nifti = write_lps_nifti(np.asarray(dicom.volume.array), dicom.volume.affine,
                            root / "volume.nii.gz")
    predictor = load_predictor(segmentation_artifact(root / "artifact"), device="cpu")
    predictor.warmup()
    results = {}
    for name, inputs in (("dicom", (root / "dicom",)), ("nifti", (nifti,))):
        out = root / f"out-{name}"
        out.mkdir()
        results[name] = predictor.predict(PredictionRequest(inputs, ALL, out))
    return {"root": root, "series": series, "input": dicom, "predictor": predictor, **results}


def _nifti(path: Path):
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine


def test_predictor_meets_the_protocol_and_describes_itself(case):
    predictor = case["predictor"]
    assert isinstance(predictor, Predictor)
    info = predictor.info
    assert info["task"] == "segmentation" and info["heads"] == {"seg": "segmentation"}
    assert info["labels"] == SEG_LABELS and len(info["artifact_sha256"]) == 64
    assert info["plan"]["window"] == [32, 32, 16] and info["device"] == "cpu"


def test_dicom_and_lps_nifti_give_the_same_labels_on_the_same_world_grid(case):
    from_dicom, affine_dicom = _nifti(case["dicom"].files["segmentation.nii.gz"])
    from_nifti, affine_nifti = _nifti(case["nifti"].files["segmentation.nii.gz"])
    assert from_dicom.shape == case["input"].volume.array.shape == (48, 48, 20)
    # an axial series is LPS (columns, rows, slices up): its own grid, as the LPS NIfTI's
    assert np.allclose(affine_dicom, case["input"].native.affine, atol=1e-4)
    assert "".join(nib.aff2axcodes(affine_dicom)) == "LPS"
    assert np.allclose(affine_nifti, affine_dicom, atol=1e-4)
    assert np.array_equal(from_dicom, from_nifti)
    assert set(np.unique(from_dicom)) <= {0, 1, 2} and from_dicom.any()


def test_nifti_output_bytes_are_deterministic(case, tmp_path):
    again = case["predictor"].predict(
        PredictionRequest((case["root"] / "dicom",), frozenset({"nifti"}), tmp_path)
    )
    first = case["dicom"].files["segmentation.nii.gz"].read_bytes()
    assert again.files["segmentation.nii.gz"].read_bytes() == first


def test_summary_reports_structures_in_ml_and_timings(case):
    summary = case["dicom"].summary
    seg = summary["segmentation"]["seg"]
    labels, _ = _nifti(case["dicom"].files["segmentation.nii.gz"])
    assert seg["voxel_ml"] == pytest.approx(4 * 4 * 6 / 1000)
    for structure in seg["structures"]:
        count = int((labels == structure["value"]).sum())
        assert structure["label"] == SEG_LABELS[structure["value"]]
        assert structure["voxels"] == count
        assert structure["volume_ml"] == pytest.approx(count * 0.096, rel=1e-6)
    assert summary["input"]["kind"] == "dicom" and summary["input"]["shape"] == [48, 48, 20]
    assert summary["timings_s"]["total_s"] > 0
    assert sorted(summary["outputs"]) == ["overlay.png", "seg.dcm", "segmentation.nii.gz"]
    assert "sr: not written, the input was not DICOM" in case["nifti"].summary["notes"]
    assert "seg.dcm" not in case["nifti"].files


def test_seg_references_the_source_series_and_matches_the_label_map(case):
    seg = pydicom.dcmread(case["dicom"].files["seg.dcm"])
    sources = case["input"].source_datasets
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == CANARY_SERIES
    assert seg.SeriesInstanceUID != CANARY_SERIES and seg.StudyInstanceUID == CANARY_STUDY
    assert seg.PatientID == CANARY_ID  # the PACS copy carries the source's patient module
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    by_sop = {ds.SOPInstanceUID: ds for ds in sources}
    labels, affine = _nifti(case["dicom"].files["segmentation.nii.gz"])
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    for frame, group in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        source_uid = (group.DerivationImageSequence[0].SourceImageSequence[0]
                      .ReferencedSOPInstanceUID)
        source = by_sop[source_uid]
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in source.ImagePositionPatient], atol=1e-3)
        segment = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ijk = np.rint(slice_voxel_indices(source, affine)).astype(int)
        expected = labels[ijk[..., 0], ijk[..., 1], ijk[..., 2]] == segment
        assert np.array_equal(frame.astype(bool), expected)


def test_outputs_other_than_the_seg_carry_no_identifier(case):
    sources = case["input"].source_datasets
    uids = {CANARY_SERIES, CANARY_STUDY, sources[0].FrameOfReferenceUID}
    uids |= {ds.SOPInstanceUID for ds in sources}
    canaries = [CANARY_NAME, CANARY_ID, "CANARY", *uids]
    for result in (case["dicom"], case["nifti"]):
        text = json.dumps(result.summary)
        assert not any(c in text for c in canaries)
        for name, path in result.files.items():
            if name.endswith(".dcm"):
                continue
            data = path.read_bytes()
            assert not any(c.encode() in data for c in canaries), name


def test_png_overlay_is_a_valid_image(case):
    from matplotlib.image import imread

    path = case["dicom"].files["overlay.png"]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300
    assert float(image[..., :3].std()) > 0.05  # not a blank canvas


def test_bad_upload_is_an_input_error(case, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an image" * 40)
    with pytest.raises(InputError, match="not DICOM, NIfTI or NRRD"):
        case["predictor"].predict(PredictionRequest((junk,), frozenset({"json"}), tmp_path))


def test_a_2d_artifact_segments_a_volume_slice_by_slice_on_its_grid(case, tmp_path):
    predictor = ArtifactPredictor(segmentation_artifact_2d(tmp_path / "a2d"), device="cpu")
    predictor.warmup()
    assert predictor.info["plan"]["window"] == [32, 32] and predictor.info["backbone"] == "resenc2d"
    result = predictor.predict(PredictionRequest((case["root"] / "dicom",), frozenset({"nifti", "seg"}), tmp_path))
    labels, affine = _nifti(result.files["segmentation.nii.gz"])
    assert labels.shape == case["input"].native.shape and np.allclose(affine, case["input"].native.affine, atol=1e-4)
    # the head reads intensity: the 3D model with the same rule labels the same voxels, mostly
    three_d, _ = _nifti(case["dicom"].files["segmentation.nii.gz"])
    assert (labels == three_d).mean() > 0.8 and len(np.unique(labels)) >= 2
    assert pydicom.dcmread(result.files["seg.dcm"]).ReferencedSeriesSequence[0].SeriesInstanceUID == CANARY_SERIES


def test_a_2d_artifact_with_a_volume_level_head_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="slice by slice for segmentation only"):
        ArtifactPredictor(segmentation_artifact_2d(tmp_path / "a2d", with_classifier=True), device="cpu")


def test_artifact_without_heads_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="a pretrained encoder only; fine-tune a head first"):
        ArtifactPredictor(encoder_only_artifact(tmp_path / "encoder"), device="cpu")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("true_digest", [True, False])
def test_pickle_posing_as_weights_is_refused_and_never_runs(tmp_path, true_digest):
    folder = segmentation_artifact(tmp_path / "artifact")
    marker = tmp_path / "pwned"
    weights = pickle.dumps(_Payload(marker))
    (folder / "model.safetensors").write_bytes(weights)
    meta = json.loads((folder / "artifact.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(weights).hexdigest() if true_digest else "0" * 64
    (folder / "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="not a safetensors file" if true_digest else "sha256"):
        load_predictor(folder, device="cpu")
    assert not marker.exists()


def test_bad_arguments_are_refused(tmp_path):
    folder = segmentation_artifact(tmp_path / "artifact")
    with pytest.raises(ValueError, match="overlap"):
        ArtifactPredictor(folder, device="cpu", overlap=1.0)
    meta = json.loads((folder / "artifact.json").read_text())
    meta["plan"] = None
    reseal_artifact(folder, meta)
    with pytest.raises(ArtifactError, match="no preprocessing plan"):
        ArtifactPredictor(folder, device="cpu")


def test_unused_series_fixture_writes_canaries(case):
    header = pydicom.dcmread(case["series"][0], stop_before_pixels=True)
    assert str(header.PatientName) == CANARY_NAME and header.PatientID == CANARY_ID


def test_segmentation_spec_repeating_the_encoder_keys_is_accepted_only_when_they_agree(tmp_path):
    folder = segmentation_artifact(tmp_path / "artifact")
    meta = json.loads((folder / "artifact.json").read_text())
    meta["heads"]["seg"].update(feature_channels=[8, 16], feature_strides=[1, 2], in_channels=1)
    reseal_artifact(folder, meta)
    assert ArtifactPredictor(folder, device="cpu").model.kinds == {"seg": "segmentation"}
    meta["heads"]["seg"]["feature_channels"] = [8, 32]
    reseal_artifact(folder, meta)
    with pytest.raises(ArtifactError, match="feature_channels=.*differs from the encoder"):
        ArtifactPredictor(folder, device="cpu")
