"""Weights come only from safetensors with their sha256 checked: a pickle is never executed."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from pathlib import Path

import httpx
import pytest

from tests.inference.server.conftest import AUTH
from tests.inference.server.payloads import dicom_series, multipart_files


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _poisoned_artifact(folder: Path, marker: Path, record_true_digest: bool) -> Path:
    folder.mkdir(parents=True)
    weights = pickle.dumps(_Payload(marker))
    (folder / "model.safetensors").write_bytes(weights)
    digest = hashlib.sha256(weights).hexdigest() if record_true_digest else "0" * 64
    meta = {"format": 1, "backbone": {"name": "resenc3d", "kwargs": {}}, "heads": {}, "weights_sha256": digest}
    (folder / "artifact.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("true_digest", [True, False], ids=["digest-matches", "digest-differs"])
def test_pickle_posing_as_weights_is_refused_and_never_runs(server_factory, tmp_path, true_digest):
    marker = tmp_path / "pwned"
    artifact = _poisoned_artifact(tmp_path / "artifact", marker, true_digest)
    srv = server_factory({"artifact": str(artifact)})
    answer = srv.wait_ready(timeout_s=0.0, expect=-1)  # the first answer, once it listens
    for _ in range(200):  # loading fails fast; wait until the failure is recorded
        if "failed" in answer.json().get("detail", ""):
            break
        time.sleep(0.1)
        answer = httpx.get(srv.url + "/ready")
    assert answer.status_code == 503
    detail = answer.json()["detail"]
    assert detail.startswith("model failed to load: ArtifactError")
    assert ("not a safetensors file" in detail) if true_digest else ("sha256" in detail)
    r = httpx.post(srv.url + "/v1/predict", files=multipart_files(dicom_series(1)), headers=AUTH)
    assert r.status_code == 503
    assert httpx.get(srv.url + "/live").status_code == 200
    assert not marker.exists()


def test_serves_a_real_exported_artifact(server_factory, tmp_path):
    from tests.inference.artifact_builders import (
        CANARY_ID,
        CANARY_NAME,
        phantom_series,
        segmentation_artifact,
    )

    artifact = segmentation_artifact(tmp_path / "artifact")
    srv = server_factory({"real_artifact": str(artifact)})
    assert srv.wait_ready(timeout_s=120).status_code == 200
    info = httpx.get(srv.url + "/v1/models", headers=AUTH).json()["models"][0]
    assert info
    blobs = [p.read_bytes() for p in phantom_series(tmp_path / "series")]
    r = httpx.post(srv.url + "/v1/predict?outputs=json,nifti,seg", files=multipart_files(blobs), headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    assert CANARY_NAME not in r.text and CANARY_ID not in r.text  # the response is pseudonymous
    body = r.json()
    assert body, body
