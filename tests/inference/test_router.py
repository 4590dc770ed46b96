"""The Orthanc router, end to end: a real Orthanc, a real HTTP service on loopback, real DICOM.

A phantom CT series is uploaded to Orthanc; the router sees it become stable, sends it to a
stand-in medssl-serve (a FastAPI app in this file that thresholds the series with medssl's
own readers and answers with a DICOM SEG from ``write_dicom_seg``), and stores the SEG back.
The test then reads the SEG out of Orthanc and checks its references and frame geometry
against the source files. A second version runs the real ``medssl serve`` once it exists.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
import uvicorn
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from medssl.errors import ConfigError
from medssl.inference.router import (
    Router,
    RouterConfig,
    RouterError,
    RouterState,
    dicom_members,
)
from medssl.inference.router_cli import router_main
from medssl.io.dicom_scan import scan_file
from medssl.io.dicom_stack import build_stacks
from medssl.io.dicom_volume import read_stack
from medssl.io.seg_writer import write_dicom_seg
from medssl.io.sources import SourceItem, iter_source_items
from tools.phantom import make_ct_phantom, write_ct_series

TOKEN = "router-test-token"
PATIENT_NAME = "ROUTER^PHANTOM"
POLL_DEADLINE_S = 40.0

# -- a stand-in medssl-serve ----------------------------------------------------------------


def _threshold_seg(zip_bytes: bytes, workdir: Path) -> bytes:
    """Read the uploaded series with medssl's readers, threshold it, answer a zip with a SEG."""
    upload = workdir / "upload.zip"
    upload.write_bytes(zip_bytes)
    items = [item for item in iter_source_items(upload) if isinstance(item, SourceItem)]
    records = [rec for item in items for rec in scan_file(item, item.read_bytes())]
    (stack,), _ = build_stacks(records)
    volume, _ = read_stack(stack, lambda item: item.read_bytes())
    datasets = [pydicom.dcmread(io.BytesIO(item.read_bytes())) for item in items]
    labels = (volume.array > 100).astype(np.uint8)
    seg = write_dicom_seg(
        labels,
        datasets,
        {1: "dense"},
        workdir / "seg.dcm",
        algorithm_name="threshold-standin",
        algorithm_version="0",
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.write(seg, "seg.dcm")
        archive.writestr("summary.json", json.dumps({"structures": ["dense"]}))
    return out.getvalue()


def standin_app(behaviour: dict, workdir: Path) -> FastAPI:
    """``behaviour``: ``fail_first`` (answer 503 this many times), ``reject`` (answer 422)."""
    app = FastAPI()

    @app.get("/ready")
    def ready() -> dict:
        return {"ready": True}

    @app.post("/v1/predict")
    async def predict(request: Request, file: UploadFile = File(...)) -> Response:  # noqa: B008
        behaviour["calls"] = behaviour.get("calls", 0) + 1
        behaviour["params"] = dict(request.query_params)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        if behaviour.get("fail_first", 0) >= behaviour["calls"]:
            return JSONResponse({"error": "busy"}, status_code=503)
        if behaviour.get("reject"):
            return JSONResponse({"error": "bad_input", "detail": "PHI-free reason"}, 422)
        body = await file.read()
        return Response(_threshold_seg(body, workdir), media_type="application/zip")

    return app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def standin(tmp_path):
    """A real uvicorn server on loopback running :func:`standin_app`; yields (url, behaviour)."""
    behaviour: dict = {}
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            standin_app(behaviour, tmp_path), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "stand-in service did not start"
    yield f"http://127.0.0.1:{port}", behaviour
    server.should_exit = True
    thread.join(timeout=10)


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture
def stable_orthanc(orthanc_factory):
    return orthanc_factory(config={"StableAge": 1})


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory) -> list[Path]:
    phantom = make_ct_phantom((24, 20, 12), (4.0, 4.0, 5.0), seed=5, n_lesions=1)
    return write_ct_series(
        phantom,
        tmp_path_factory.mktemp("ct"),
        patient_name=PATIENT_NAME,
        patient_id="ROUTERPID01",
        orientation="coronal",
    )


def _config(tmp_path, orthanc_url: str, serve_url: str, **kwargs) -> RouterConfig:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    defaults = {
        "state_file": tmp_path / "state.json",
        "token_file": token,
        "poll_interval_s": 0.2,
        "attempts": 3,
        "backoff_s": 0.01,
    }
    return RouterConfig(orthanc_url=orthanc_url, serve_url=serve_url, **{**defaults, **kwargs})


def _poll_until(router: Router, done, deadline_s: float = POLL_DEADLINE_S):
    total: dict = {}
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for key, value in router.poll_once().items():
            total[key] = total.get(key, 0) + value
        if done(total):
            return total
        time.sleep(0.2)
    raise AssertionError(f"router did not get there in {deadline_s} s: {total}")


def _series_of_modality(orthanc, modality: str) -> list[str]:
    found = requests.post(
        f"{orthanc.url}/tools/find",
        timeout=10,
        json={"Level": "Series", "Query": {"Modality": modality}},
    )
    found.raise_for_status()
    return found.json()


def _upload(orthanc, paths) -> None:
    for path in paths:
        orthanc.upload(path)


# -- end to end -------------------------------------------------------------------------------


def assert_seg_matches_source(orthanc, sources: list[pydicom.Dataset]) -> None:
    """Exactly one SEG in Orthanc; it references the source series, frame by frame."""
    (seg_series,) = _series_of_modality(orthanc, "SEG")
    (instance,) = requests.get(f"{orthanc.url}/series/{seg_series}/instances", timeout=10).json()
    data = requests.get(f"{orthanc.url}/instances/{instance['ID']}/file", timeout=10).content
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(data)))
    source_uid = sources[0].SeriesInstanceUID
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [source_uid]
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    referenced = {
        i.ReferencedSOPInstanceUID
        for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == set(by_uid)
    assert int(seg.NumberOfFrames) > 0
    for item in seg.PerFrameFunctionalGroupsSequence:
        src = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in by_uid[src].ImagePositionPatient],
            atol=1e-4,
        )
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
        [float(v) for v in sources[0].ImageOrientationPatient],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing],
        [float(v) for v in sources[0].PixelSpacing],
        atol=1e-6,
    )


@pytest.mark.orthanc
def test_series_to_router_to_seg_in_orthanc(stable_orthanc, standin, ct_series, tmp_path, caplog):
    serve_url, behaviour = standin
    _upload(stable_orthanc, ct_series)
    config = _config(tmp_path, stable_orthanc.url, serve_url)
    router = Router(config)
    with caplog.at_level(logging.INFO, logger="medssl.inference.router"):
        stats = _poll_until(router, lambda s: s.get("processed", 0) >= 1)
        assert stats.get("stored") == 1 and not stats.get("failed")
        sources = [pydicom.dcmread(p) for p in ct_series]
        assert_seg_matches_source(stable_orthanc, sources)
        assert behaviour["params"] == {"outputs": "seg,sr", "format": "zip"}
        # the SEG's own StableSeries event comes next: skipped, never sent to the model
        _poll_until(router, lambda s: s.get("skipped", 0) >= 1)
    assert behaviour["calls"] == 1
    # a restarted router resumes after the last handled change: nothing is redone
    restarted = Router(config)
    assert restarted.state.last_change == router.state.last_change > 0
    assert sum(restarted.poll_once().values()) == 0
    assert behaviour["calls"] == 1
    assert len(_series_of_modality(stable_orthanc, "SEG")) == 1
    log_text = caplog.text
    for secret in (sources[0].SeriesInstanceUID, sources[0].StudyInstanceUID, "ROUTER", TOKEN):
        assert secret not in log_text
    assert "stored 1 result object" in log_text


@pytest.mark.orthanc
def test_transient_503_is_retried_with_backoff(stable_orthanc, standin, ct_series, tmp_path):
    serve_url, behaviour = standin
    behaviour["fail_first"] = 2
    _upload(stable_orthanc, ct_series)
    sleeps: list[float] = []
    router = Router(
        _config(tmp_path, stable_orthanc.url, serve_url, backoff_s=0.05), sleep=sleeps.append
    )
    _poll_until(router, lambda s: s.get("processed", 0) >= 1)
    assert behaviour["calls"] == 3
    assert sleeps[:2] == [0.05, 0.1]
    assert len(_series_of_modality(stable_orthanc, "SEG")) == 1


@pytest.mark.orthanc
def test_refused_series_is_recorded_and_skipped(
    stable_orthanc, standin, ct_series, tmp_path, caplog
):
    serve_url, behaviour = standin
    behaviour["reject"] = True
    _upload(stable_orthanc, ct_series)
    config = _config(tmp_path, stable_orthanc.url, serve_url)
    with caplog.at_level(logging.INFO, logger="medssl.inference.router"):
        _poll_until(Router(config), lambda s: s.get("failed", 0) >= 1)
    state = RouterState.load(config.state_file)
    ((series_id, reason),) = state.failed.items()
    assert reason == "prediction: medssl-serve answered HTTP 422 (bad_input)"
    assert "PHI-free reason" not in caplog.text  # the service's free text is never logged
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert line == f"series {series_id}: failed, skipped: {reason}"
    Router(config).poll_once()
    assert behaviour["calls"] == 1 and not _series_of_modality(stable_orthanc, "SEG")


@pytest.mark.orthanc
def test_unreachable_service_defers_then_gives_up(stable_orthanc, ct_series, tmp_path):
    _upload(stable_orthanc, ct_series)
    dead = f"http://127.0.0.1:{_free_port()}"
    config = _config(tmp_path, stable_orthanc.url, dead, max_series_polls=2, attempts=2)
    router = Router(config)
    first = _poll_until(router, lambda s: s.get("deferred", 0) >= 1)
    assert not first.get("failed")
    assert list(router.state.retries.values()) == [1]
    second = router.poll_once()
    assert second["failed"] == 1
    assert "ConnectionError after 2 attempts" in next(iter(router.state.failed.values()))


@pytest.mark.orthanc
def test_wrong_token_stops_the_router(stable_orthanc, standin, ct_series, tmp_path):
    serve_url, _ = standin
    _upload(stable_orthanc, ct_series)
    config = _config(tmp_path, stable_orthanc.url, serve_url)
    config.token_file.write_text("wrong")
    router = Router(config)
    with pytest.raises(ConfigError, match="refused the router's credentials"):
        _poll_until(router, lambda s: False, deadline_s=15)
    assert not router.state.failed  # not the series' fault: it is tried again after a fix


@pytest.mark.orthanc
def test_router_main_once_against_orthanc_with_auth(orthanc_factory, standin, ct_series, tmp_path):
    orthanc = orthanc_factory(users={"router": "s3cret"}, config={"StableAge": 1})
    for path in ct_series:
        requests.post(
            f"{orthanc.url}/instances",
            data=Path(path).read_bytes(),
            auth=("router", "s3cret"),
            timeout=10,
        ).raise_for_status()
    serve_url, behaviour = standin
    (tmp_path / "credentials").write_text("router:s3cret\n")
    (tmp_path / "token").write_text(TOKEN)
    argv = [
        "--orthanc-url",
        orthanc.url,
        "--serve-url",
        serve_url,
        "--once",
        "--orthanc-credentials-file",
        str(tmp_path / "credentials"),
        "--token-file",
        str(tmp_path / "token"),
        "--state-file",
        str(tmp_path / "s.json"),
        "--heartbeat-file",
        str(tmp_path / "heartbeat"),
    ]
    deadline = time.monotonic() + POLL_DEADLINE_S
    while behaviour.get("calls", 0) == 0 and time.monotonic() < deadline:
        assert router_main(argv) == 0
        time.sleep(0.3)
    assert behaviour.get("calls") == 1
    assert (tmp_path / "heartbeat").read_text().strip().isdigit()
    (tmp_path / "credentials").write_text("router:wrong\n")
    assert router_main(argv) == 2


# -- units ------------------------------------------------------------------------------------


def test_state_round_trip_and_corrupt_file(tmp_path):
    path = tmp_path / "state.json"
    assert RouterState.load(path) == RouterState()
    RouterState(41, {"abc": "reason"}, {"def": 1}).save(path)
    assert RouterState.load(path) == RouterState(41, {"abc": "reason"}, {"def": 1})
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        RouterState.load(path)
    path.write_text('{"last_change": "7"}')
    with pytest.raises(ConfigError, match="no integer 'last_change'"):
        RouterState.load(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"orthanc_url": "orthanc:8042"}, "must start with http"),
        ({"attempts": 0}, "must be >= 1"),
        ({"poll_interval_s": 0}, "must be > 0"),
        ({"outputs": ("seg", "pdf")}, "outputs must be some of"),
        ({"outputs": ()}, "outputs must be some of"),
    ],
)
def test_bad_config_raises(tmp_path, kwargs, message):
    base = {
        "orthanc_url": "http://127.0.0.1:1",
        "serve_url": "http://127.0.0.1:2",
        "state_file": tmp_path / "s.json",
    }
    with pytest.raises(ConfigError, match=message):
        RouterConfig(**{**base, **kwargs})


def test_secret_files_are_checked(tmp_path):
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "nocolon").write_text("justauser\n")
    base = {
        "orthanc_url": "http://127.0.0.1:1",
        "serve_url": "http://127.0.0.1:2",
        "state_file": tmp_path / "s.json",
    }
    with pytest.raises(ConfigError, match="is empty"):
        Router(RouterConfig(**base, token_file=tmp_path / "empty"))
    with pytest.raises(ConfigError, match="expected 'user:password'"):
        Router(RouterConfig(**base, orthanc_credentials_file=tmp_path / "nocolon"))
    with pytest.raises(ConfigError, match="secret file"):
        Router(RouterConfig(**base, token_file=tmp_path / "missing"))


def test_dicom_members_keeps_only_part10_files(ct_series):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.write(ct_series[0], "a.dcm")
        archive.writestr("summary.json", "{}")
        archive.writestr("segmentation.nii.gz", b"\x1f\x8b" + bytes(200))
    members = dicom_members(buffer.getvalue())
    assert members == [Path(ct_series[0]).read_bytes()]
    with pytest.raises(RouterError, match="not a zip"):
        dicom_members(b"PK\x03\x04 truncated")


def test_router_main_without_state_file_is_a_config_error(capsys, monkeypatch):
    monkeypatch.delenv("MEDSSL_ROUTER_STATE_FILE", raising=False)
    assert router_main(["--once"]) == 2
    assert "--state-file" in capsys.readouterr().err


# -- with the real service, once it exists ------------------------------------------------------


@pytest.mark.orthanc
def test_with_real_medssl_serve(stable_orthanc, ct_series, tmp_path):
    from tests.inference.artifact_builders import segmentation_artifact

    # a real artifact (tiny encoder + decoder); MEDSSL_TEST_SEG_ARTIFACT may name a trained one
    artifact = os.environ.get("MEDSSL_TEST_SEG_ARTIFACT") or str(segmentation_artifact(tmp_path / "artifact"))
    port = _free_port()
    (tmp_path / "token").write_text(TOKEN)
    code = (
        "import sys; from medssl.inference.server.cli import serve_main; "
        "sys.exit(serve_main(sys.argv[1:]))"
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "--model",
            artifact,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--token-file",
            str(tmp_path / "token"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        serve_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{serve_url}/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("medssl serve did not become ready in 120 s")
        _upload(stable_orthanc, ct_series)
        router = Router(_config(tmp_path, stable_orthanc.url, serve_url, outputs=("seg",)))
        _poll_until(router, lambda s: s.get("processed", 0) >= 1, deadline_s=300)
        assert_seg_matches_source(stable_orthanc, [pydicom.dcmread(p) for p in ct_series])
    finally:
        process.terminate()
        process.wait(timeout=20)
