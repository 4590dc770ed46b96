"""Modality guards: the input's modality is reported as it is (null when unknown), a model
trained on another says so in a warning, and ``strict_modality`` refuses instead."""

from __future__ import annotations

import json

import pytest

from medssl.errors import MedsslError
from medssl.inference.modality import MODALITY_MISMATCH, ModalitySource, check_modality, parse_modality
from medssl.inference.predict import ArtifactPredictor
from medssl.inference.predict_cli import predict_main
from medssl.inference.predictor import InputError, PredictionRequest
from tests.inference.artifact_builders import phantom_series, segmentation_artifact, write_lps_nifti

JSON = frozenset({"json"})


# the decision on its own -------------------------------------------------------------------
def test_a_dicom_modality_that_was_trained_passes_silently():
    check = check_modality("dicom", "CT", None, ("CT",))
    assert (check.modality, check.source, check.normalised_as, check.warnings) == ("CT", ModalitySource.DICOM, "CT", ())


def test_an_untrained_modality_warns_or_is_refused_naming_both():
    check = check_modality("dicom", "MR", None, ("CT",))
    assert check.modality == "MR" and check.normalised_as == "MR"
    assert check.warnings == ("input modality MR, but the model was trained on CT only: results may be unreliable",)
    with pytest.raises(InputError, match=r"\[modality_mismatch\] input modality MR; the model was trained on CT only") as info:
        check_modality("dicom", "MR", None, ("CT",), strict=True)
    assert info.value.code == MODALITY_MISMATCH


def test_an_unknown_modality_is_null_and_the_assumption_is_said():
    check = check_modality("nifti", None, None, ("CT",))
    assert check.modality is None and check.source == ModalitySource.UNKNOWN and check.normalised_as == "CT"
    assert "assumed CT" in check.warnings[0] and "NIFTI file carries no modality" in check.warnings[0]
    with pytest.raises(InputError, match="input modality unknown .*trained on CT"):
        check_modality("nrrd", None, None, ("CT",), strict=True)
    several = check_modality("nifti", None, None, ("CT", "MR"))
    assert several.normalised_as is None and "plan's default" in several.warnings[0]


def test_a_stated_modality_is_used_and_a_dicom_header_wins_over_it():
    stated = check_modality("nifti", None, "CT", ("CT",))
    assert (stated.modality, stated.source, stated.warnings) == ("CT", ModalitySource.USER, ())
    header = check_modality("dicom", "CT", "MR", ("CT",))
    assert header.modality == "CT" and header.warnings == ("--modality MR ignored: the DICOM series says CT",)


def test_a_model_trained_on_modality_less_volumes_takes_unknown_inputs_as_such():
    check = check_modality("nifti", None, None, ("OT",), strict=True)
    assert check.modality is None and check.normalised_as == "OT" and check.warnings == ()


def test_user_modalities_are_dicom_codes():
    assert parse_modality(" mr ") == "MR" and parse_modality(None) is None
    with pytest.raises(InputError, match="1-16 letters or digits"):
        parse_modality("C T; DROP")
    with pytest.raises(InputError, match="upper-case"):
        PredictionRequest(("x",), modality="c t")


# through the predictor and the CLI ----------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from medssl.inference.inputs import read_input

    root = tmp_path_factory.mktemp("modality")
    phantom_series(root / "ct", shape=(32, 32, 12))
    phantom_series(root / "mr", shape=(32, 32, 12), series_uid="1.2.826.0.1.3680043.8.498.99")
    _retag(root / "mr", "MR")
    ct = read_input([root / "ct"]).volume
    return {"root": root, "ct": root / "ct", "mr": root / "mr",
            "nifti": write_lps_nifti(ct.array, ct.affine, root / "ct.nii.gz"),
            "artifact": segmentation_artifact(root / "artifact")}


def _retag(folder, modality: str) -> None:
    import pydicom

    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.Modality = modality
        ds.save_as(path)


def _predict(predictor, path, tmp_path, modality=None):
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    return predictor.predict(PredictionRequest((path,), JSON, out, modality=modality)).summary


def test_nifti_without_a_modality_is_reported_unknown_with_the_assumption(inputs, tmp_path):
    predictor = ArtifactPredictor(inputs["artifact"], device="cpu")
    summary = _predict(predictor, inputs["nifti"], tmp_path)
    assert summary["input"]["modality"] is None and summary["input"]["modality_source"] == "unknown"
    assert summary["input"]["normalised_as"] == "CT" and summary["input"]["trained_modalities"] == ["CT"]
    assert len(summary["warnings"]) == 1 and "assumed CT" in summary["warnings"][0]
    stated = _predict(predictor, inputs["nifti"], tmp_path, modality="CT")
    assert stated["input"]["modality"] == "CT" and stated["warnings"] == []
    # same normalisation either way: the same structures
    assert stated["segmentation"] == summary["segmentation"]
    mr = _predict(predictor, inputs["nifti"], tmp_path, modality="MR")
    assert mr["input"]["modality"] == "MR" and "trained on CT only" in mr["warnings"][0]


def test_an_mr_series_on_a_ct_model_warns_or_is_refused(inputs, tmp_path):
    summary = _predict(ArtifactPredictor(inputs["artifact"], device="cpu"), inputs["mr"], tmp_path)
    assert summary["input"]["modality"] == "MR" and summary["input"]["modality_source"] == "dicom"
    assert summary["warnings"] == ["input modality MR, but the model was trained on CT only: results may be unreliable"]
    strict = ArtifactPredictor(inputs["artifact"], device="cpu", strict_modality=True)
    with pytest.raises(InputError, match="input modality MR; the model was trained on CT only"):
        _predict(strict, inputs["mr"], tmp_path)
    assert _predict(strict, inputs["ct"], tmp_path)["warnings"] == []


def test_recorded_modalities_win_over_the_plans(inputs, tmp_path):
    artifact = segmentation_artifact(tmp_path / "mr-model", modalities=["mr"])
    predictor = ArtifactPredictor(artifact, device="cpu")
    assert predictor.info["modalities"] == ["MR"]
    summary = _predict(predictor, inputs["ct"], tmp_path)
    assert "trained on MR only" in summary["warnings"][0]


def test_cli_flags(inputs, tmp_path, capsys):
    out = tmp_path / "a"
    predict_main(["--model", str(inputs["artifact"]), "--input", str(inputs["nifti"]), "--out", str(out),
                  "--outputs", "json", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "warning: input modality unknown" in printed
    assert json.loads((out / "prediction.json").read_text())["input"]["modality"] is None
    predict_main(["--model", str(inputs["artifact"]), "--input", str(inputs["nifti"]), "--out", str(tmp_path / "b"),
                  "--outputs", "json", "--device", "cpu", "--modality", "ct", "--strict-modality"])
    assert "warning" not in capsys.readouterr().out
    with pytest.raises(MedsslError, match="input modality unknown .*trained on CT"):
        predict_main(["--model", str(inputs["artifact"]), "--input", str(inputs["nifti"]),
                      "--out", str(tmp_path / "c"), "--device", "cpu", "--strict-modality"])
