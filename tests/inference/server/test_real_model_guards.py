"""A real exported artifact behind the server refuses what it cannot take with a 4xx and a
reason (issue 15, items 2 and 4): a declared-size bomb by the model's own memory estimate
(preprocessing and sliding-window buffers included), a DICOM series with an empty
TransferSyntaxUID by the reader, never a 500."""

from __future__ import annotations

import struct

import httpx
import pytest

from medssl.inference.declared import DeclaredVolume
from medssl.inference.predict import ArtifactPredictor
from tests.inference.server.conftest import AUTH
from tests.inference.server.payloads import multipart_files
from tests.inference.server.test_bombs import declared_nifti_gz


def empty_transfer_syntax(blob: bytes) -> bytes:
    """A Part 10 file whose (0002,0010) TransferSyntaxUID is present but empty."""
    at = blob.index(b"\x02\x00\x10\x00UI")
    n = struct.unpack("<H", blob[at + 6 : at + 8])[0]
    out = blob[: at + 6] + b"\x00\x00" + blob[at + 8 + n :]
    group = out.index(b"\x02\x00\x00\x00UL")
    length = struct.unpack("<I", out[group + 8 : group + 12])[0] - n
    return out[: group + 8] + struct.pack("<I", length) + out[group + 12 :]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from tests.inference.artifact_builders import segmentation_artifact

    return segmentation_artifact(tmp_path_factory.mktemp("guards") / "artifact")


@pytest.fixture(scope="module")
def real_server(server_factory, artifact):
    running = server_factory({"real_artifact": str(artifact), "settings": {"memory_budget_gb": 2}})
    assert running.wait_ready(timeout_s=120).status_code == 200
    return running


def test_the_model_estimate_grows_with_the_declared_volume(artifact):
    predictor = ArtifactPredictor(artifact, device="cpu")
    small = predictor.memory_needed(DeclaredVolume((64, 64, 32), 2, (1.0, 1.0, 1.0)))
    large = predictor.memory_needed(DeclaredVolume((1024, 1024, 256), 1, (1.0, 1.0, 1.0)))
    assert large > 256 << 20 > small  # at least the declared voxels
    finer = predictor.memory_needed(DeclaredVolume((64, 64, 32), 2, (20.0, 20.0, 20.0)))
    assert finer > small  # upsampled onto the plan's grid: more model voxels


def test_a_declared_size_bomb_is_413_by_the_models_estimate(real_server):
    files = [("file", ("x.nii.gz", declared_nifti_gz((1024, 1024, 256)), "application/gzip"))]
    before = real_server.rss_kib()
    r = httpx.post(real_server.url + "/v1/predict", files=files, headers=AUTH, timeout=120)
    assert r.status_code == 413 and r.json()["error"] == "too_large", r.text
    assert "1024x1024x256 of 1-byte voxels" in r.json()["detail"]
    assert real_server.rss_kib() - before < 64 * 1024


def test_an_empty_transfer_syntax_is_422_with_a_reason(real_server, tmp_path):
    from tests.inference.artifact_builders import phantom_series

    blobs = [empty_transfer_syntax(p.read_bytes()) for p in phantom_series(tmp_path / "s")]
    r = httpx.post(
        real_server.url + "/v1/predict", files=multipart_files(blobs), headers=AUTH, timeout=120
    )
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert r.json()["error"] == "invalid_input"
    assert "TransferSyntaxUID" in detail or "could not be decoded" in detail


def test_a_reader_failing_in_a_way_it_does_not_name_is_an_input_error(monkeypatch, tmp_path):
    # before the reader named the empty TransferSyntaxUID it raised AttributeError: a 500
    from medssl.inference import inputs
    from medssl.inference.predictor import InputError
    from tests.inference.artifact_builders import phantom_series

    def broken(*_args, **_kwargs):
        raise AttributeError("'str' object has no attribute 'is_compressed'")

    monkeypatch.setattr(inputs, "read_stack", broken)
    with pytest.raises(InputError, match=r"\[malformed\] the series could not be decoded"):
        inputs.read_input(phantom_series(tmp_path / "s"))


def test_a_prediction_given_up_stops_at_its_next_step(artifact, tmp_path):
    import threading

    from medssl.inference.cancel import Cancelled, cancellable
    from medssl.inference.predictor import PredictionRequest
    from tests.inference.artifact_builders import phantom_series

    predictor = ArtifactPredictor(artifact, device="cpu")
    request = PredictionRequest(tuple(phantom_series(tmp_path / "s")), output_dir=tmp_path)
    given_up = threading.Event()
    given_up.set()
    with cancellable(given_up), pytest.raises(Cancelled, match="passed the deadline"):
        predictor.predict(request)
    assert not list(tmp_path.glob("*.nii.gz"))  # nothing written
    assert predictor.predict(request).summary["segmentation"]  # outside: runs to the end
