"""``medssl serve`` with a real artifact: modality warnings and refusals in the HTTP answer,
and the label map on the upload's own grid."""

from __future__ import annotations

import gzip
import io
import json
import zipfile

import httpx
import nibabel as nib
import numpy as np
import pytest

from tests.inference.server.conftest import AUTH


@pytest.fixture(scope="module")
def upload(tmp_path_factory):
    from tests.inference.artifact_builders import segmentation_artifact
    from tests.inference.test_predict_grid import reorder
    from tools.phantom import make_ct_phantom

    root = tmp_path_factory.mktemp("serve-modality")
    phantom = make_ct_phantom((36, 40, 14), (4.0, 4.0, 6.0), seed=1, n_lesions=0)
    array, affine = reorder(np.rint(phantom.image).astype(np.int16), phantom.affine, "PIR")
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return segmentation_artifact(root / "artifact"), image.to_bytes(), array.shape, affine


def _post(srv, data: bytes, query: str) -> httpx.Response:
    headers = {**AUTH, "Content-Type": "application/octet-stream"}
    return httpx.post(f"{srv.url}/v1/predict?{query}", content=data, headers=headers, timeout=120)


def test_warnings_in_the_answer_and_the_label_map_on_the_uploads_grid(server_factory, upload):
    artifact, data, shape, affine = upload
    srv = server_factory({"real_artifact": str(artifact)})
    assert srv.wait_ready(timeout_s=120).status_code == 200
    assert httpx.get(srv.url + "/v1/models", headers=AUTH).json()["models"][0]["modalities"] == ["CT"]
    r = _post(srv, data, "outputs=json,nifti&format=zip")
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        body = json.loads(zf.read("prediction.json"))
        labels = nib.Nifti1Image.from_bytes(gzip.decompress(zf.read("segmentation.nii.gz")))
    assert labels.shape == shape and np.allclose(labels.affine, affine, atol=1e-5)
    assert body["summary"]["input"]["modality"] is None
    assert len(body["warnings"]) == 1 and "assumed CT" in body["warnings"][0]
    mr = _post(srv, data, "modality=mr")
    assert mr.status_code == 200 and "trained on CT only" in mr.json()["warnings"][0]
    assert _post(srv, data, "modality=CT").json()["warnings"] == []
    bad = _post(srv, data, "modality=C%20T")
    assert bad.status_code == 422


def test_strict_modality_answers_422_naming_the_modalities(server_factory, upload):
    artifact, data, _shape, _affine = upload
    srv = server_factory({"real_artifact": str(artifact), "strict_modality": True})
    assert srv.wait_ready(timeout_s=120).status_code == 200
    r = _post(srv, data, "modality=MR")
    assert r.status_code == 422
    assert "input modality MR; the model was trained on CT only" in r.text
    unknown = _post(srv, data, "")
    assert unknown.status_code == 422 and "input modality unknown" in unknown.text
    ok = _post(srv, data, "modality=CT")
    assert ok.status_code == 200 and ok.json()["warnings"] == []
