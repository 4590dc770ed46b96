"""``medssl predict``: files in the output folder, one summary line, refusals as MedsslError."""

from __future__ import annotations

import json

import pytest

from medssl.errors import ConfigError, MedsslError
from medssl.inference.predict_cli import predict_main
from tests.inference.artifact_builders import CANARY_ID, phantom_series, segmentation_artifact


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    phantom_series(root / "dicom")
    return root, segmentation_artifact(root / "artifact")


def test_predict_writes_every_output_and_prints_a_summary(setup, capsys):
    root, artifact = setup
    out = root / "out"
    code = predict_main(["--model", str(artifact), "--input", str(root / "dicom"),
                         "--out", str(out), "--device", "cpu"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "artifact (segmentation); dicom 48x48x20" in lines[0]
    assert lines[1].startswith("wrote ") and str(out) in lines[1]
    names = {p.name for p in out.iterdir()}
    assert {"prediction.json", "segmentation.nii.gz", "seg.dcm", "overlay.png"} <= names
    summary = json.loads((out / "prediction.json").read_text())
    assert summary["segmentation"]["seg"]["structures"]
    assert CANARY_ID not in (out / "prediction.json").read_text()
    with pytest.raises(ConfigError, match="already holds a prediction"):
        predict_main(["--model", str(artifact), "--input", str(root / "dicom"),
                      "--out", str(out), "--device", "cpu"])


def test_outputs_subset_and_bad_values(setup, tmp_path):
    root, artifact = setup
    out = tmp_path / "json-only"
    predict_main(["--model", str(artifact), "--input", str(root / "dicom"), "--out", str(out),
                  "--outputs", "json", "--device", "cpu", "--overlap", "0.25"])
    assert {p.name for p in out.iterdir()} == {"prediction.json"}
    with pytest.raises(ConfigError, match="--outputs"):
        predict_main(["--model", str(artifact), "--input", str(root / "dicom"),
                      "--out", str(tmp_path / "x"), "--outputs", "json,dicom"])
    with pytest.raises(ConfigError, match="overlap"):
        predict_main(["--model", str(artifact), "--input", str(root / "dicom"),
                      "--out", str(tmp_path / "y"), "--overlap", "1.5", "--device", "cpu"])


def test_bad_input_and_bad_model_fail_as_medssl_errors(setup, tmp_path):
    _root, artifact = setup
    junk = tmp_path / "junk"
    junk.write_bytes(b"x" * 500)
    with pytest.raises(MedsslError, match="not DICOM"):
        predict_main(["--model", str(artifact), "--input", str(junk),
                      "--out", str(tmp_path / "o1"), "--device", "cpu"])
    with pytest.raises(MedsslError, match="expected artifact.json"):
        predict_main(["--model", str(tmp_path), "--input", str(junk),
                      "--out", str(tmp_path / "o2"), "--device", "cpu"])
