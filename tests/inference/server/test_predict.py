"""Valid uploads on a real server: DICOM files, a zip, NIfTI, raw bodies, zip answers, cleanup."""

from __future__ import annotations

import gzip
import io
import time
import zipfile

import httpx
import nibabel as nib
import pytest

from tests.inference.server.conftest import AUTH
from tests.inference.server.payloads import dicom_series, multipart_files, nifti_bytes, zip_of


def _post(server, **kwargs) -> httpx.Response:
    return httpx.post(server.url + "/v1/predict", headers={**AUTH, **kwargs.pop("headers", {})}, timeout=30, **kwargs)


def test_dicom_series_gives_a_summary_and_lists_outputs(server):
    r = _post(server, files=multipart_files(dicom_series(3)), params={"outputs": "json,nifti,seg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["summary"]["shape"] == [128, 128, 3]
    assert set(body["outputs"]) == {"segmentation.nii.gz", "seg.dcm"}
    assert all(v["bytes"] > 0 for v in body["outputs"].values())
    assert not any(server.workdir.iterdir()), "temporary files are deleted after the answer"


def test_client_file_names_never_become_paths(server):
    blobs = dicom_series(2)
    files = [("file", ("../../../../tmp/medssl-traversal.dcm", blobs[0])), ("file", ("/etc/passwd", blobs[1]))]
    r = _post(server, files=files)
    assert r.status_code == 200
    from pathlib import Path

    assert not Path("/tmp/medssl-traversal.dcm").exists()


def test_zip_answer_holds_every_output_and_the_summary(server):
    r = _post(server, files=multipart_files(dicom_series(3)), params={"outputs": "nifti", "format": "zip"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert sorted(zf.namelist()) == ["prediction.json", "segmentation.nii.gz"]
        mask = nib.Nifti1Image.from_bytes(gzip.decompress(zf.read("segmentation.nii.gz")))
        assert mask.shape == (128, 128, 3)
    time.sleep(0.2)  # the folder goes once the file is sent
    assert not any(server.workdir.iterdir())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"files": [("file", ("series.zip", zip_of({f"a/{i}.dcm": b for i, b in enumerate(dicom_series(3))})))]},
        {"files": [("file", ("x.nii", nifti_bytes()))]},
        {"files": [("file", ("x.nii.gz", gzip.compress(nifti_bytes())))]},
        {"content": zip_of({"s.dcm": dicom_series(1)[0]}), "headers": {"content-type": "application/zip"}},
        {"content": dicom_series(1)[0], "headers": {"content-type": "application/dicom"}},
    ],
    ids=["zip", "nifti", "nifti-gz", "raw-zip", "raw-dicom"],
)
def test_other_accepted_forms(server, kwargs):
    r = _post(server, **kwargs)
    assert r.status_code == 200, r.text
    assert r.json()["summary"]["foreground_voxels"] > 0


def test_metrics_count_predictions_by_status(server):
    _post(server, files=multipart_files(dicom_series(1)))
    _post(server, files=[("file", ("x", b"nonsense" * 50))])
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    assert 'medssl_http_requests_total{route="/v1/predict",status="200"}' in text
    assert 'medssl_http_requests_total{route="/v1/predict",status="415"}' in text
    assert 'medssl_http_request_seconds_bucket{le="+Inf",route="/v1/predict"}' in text


def test_live_at_once_ready_only_after_warmup(server_factory):
    slow = server_factory({"predictor": {"warmup_s": 2.0}})
    live = slow.wait_ready(timeout_s=0.0, expect=-1)  # first answer, whatever it is
    assert live.status_code == 503 and live.json()["detail"] == "model still loading"
    assert httpx.get(slow.url + "/live").status_code == 200
    r = _post(slow, files=multipart_files(dicom_series(1)))
    assert r.status_code == 503 and r.json()["error"] == "not_ready"
    assert slow.wait_ready().status_code == 200
    assert _post(slow, files=multipart_files(dicom_series(1))).status_code == 200


def test_failed_stow_is_reported_in_a_200_answer(server_factory):
    srv = server_factory({"settings": {"stow_url": "http://127.0.0.1:9/dicom-web"}})
    assert srv.wait_ready().status_code == 200
    r = _post(srv, files=multipart_files(dicom_series(2)), params={"outputs": "json,seg"})
    assert r.status_code == 200
    assert r.json()["stow"]["status"] == "failed"
