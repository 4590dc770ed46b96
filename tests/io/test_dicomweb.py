"""The DICOMweb source against a real Orthanc: search, filters, fetch, auth, failures, URLs."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medssl.errors import ConfigError, IngestError
from medssl.io.dicomweb import (
    DicomWebQuery,
    RemoteSeries,
    fetch_series,
    list_series,
    parse_dicomweb_source,
)
from medssl.types import RejectReason
from tests.orthanc import OrthancServer, _free_port

NO_CREDENTIALS: dict[str, str] = {}


@dataclass(frozen=True)
class UploadedSeries:
    study_uid: str
    series_uid: str
    modality: str
    sop_uids: tuple[str, ...]


@dataclass(frozen=True)
class Archive:
    """What was uploaded: study A (2020, a single CT slice + a 5-slice CT), study B (2019, MR)."""

    ct_single: UploadedSeries
    ct_stack: UploadedSeries
    mr: UploadedSeries


def _relabel(ds: pydicom.Dataset, study: str, series: str, date: str) -> pydicom.Dataset:
    """Fresh UIDs per session, so results are ours even on a server shared with other tests."""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDate = date
    ds.PatientID = "MEDSSL-TEST"
    return ds


def _upload(server: OrthancServer, datasets: list[pydicom.Dataset]) -> UploadedSeries:
    for ds in datasets:
        server.upload(ds)
    first = datasets[0]
    return UploadedSeries(
        first.StudyInstanceUID,
        first.SeriesInstanceUID,
        first.Modality,
        tuple(ds.SOPInstanceUID for ds in datasets),
    )


def _upload_archive(server: OrthancServer) -> Archive:
    ct_path, mr_path = get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")
    study_a, study_b = generate_uid(), generate_uid()
    ct_single = _relabel(pydicom.dcmread(ct_path), study_a, generate_uid(), "20200615")
    stack_uid, stack = generate_uid(), []
    for k in range(5):
        ds = _relabel(pydicom.dcmread(ct_path), study_a, stack_uid, "20200615")
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 2.5 * k]
        ds.InstanceNumber = k + 1
        stack.append(ds)
    mr = _relabel(pydicom.dcmread(mr_path), study_b, generate_uid(), "20190101")
    return Archive(
        ct_single=_upload(server, [ct_single]),
        ct_stack=_upload(server, stack),
        mr=_upload(server, [mr]),
    )


@pytest.fixture(scope="module")
def archive(orthanc: OrthancServer) -> Archive:
    return _upload_archive(orthanc)


def _query(server: OrthancServer, params: str = "") -> DicomWebQuery:
    return parse_dicomweb_source(server.source + (f"?{params}" if params else ""))


def _by_series(found: list[RemoteSeries]) -> dict[str, RemoteSeries]:
    return {s.series_uid: s for s in found}


# -- QIDO-RS --------------------------------------------------------------------------------


@pytest.mark.orthanc
def test_list_series_finds_every_uploaded_series(orthanc, archive):
    found = _by_series(list_series(_query(orthanc), env=NO_CREDENTIALS))
    for uploaded in (archive.ct_single, archive.ct_stack, archive.mr):
        assert found[uploaded.series_uid] == RemoteSeries(
            uploaded.study_uid, uploaded.series_uid, uploaded.modality, len(uploaded.sop_uids)
        )


@pytest.mark.orthanc
def test_modality_filter_keeps_only_ct(orthanc, archive):
    found = list_series(_query(orthanc, "modality=ct"), env=NO_CREDENTIALS)
    assert {s.modality for s in found} == {"CT"}
    assert {archive.ct_single.series_uid, archive.ct_stack.series_uid} <= set(_by_series(found))


@pytest.mark.orthanc
def test_study_filter_returns_that_study_only(orthanc, archive):
    found = list_series(_query(orthanc, f"study={archive.mr.study_uid}"), env=NO_CREDENTIALS)
    assert [s.series_uid for s in found] == [archive.mr.series_uid]


@pytest.mark.orthanc
def test_series_and_date_filters(orthanc, archive):
    one = list_series(
        _query(orthanc, f"study={archive.ct_stack.study_uid}&series={archive.ct_stack.series_uid}"),
        env=NO_CREDENTIALS,
    )
    assert [s.series_uid for s in one] == [archive.ct_stack.series_uid]
    in_2020 = set(_by_series(list_series(_query(orthanc, "study_date=20200101-20201231"),
                                         env=NO_CREDENTIALS)))
    assert archive.ct_stack.series_uid in in_2020 and archive.mr.series_uid not in in_2020
    before_2020 = set(_by_series(list_series(_query(orthanc, "study_date=-20191231"),
                                             env=NO_CREDENTIALS)))
    assert archive.mr.series_uid in before_2020 and archive.ct_stack.series_uid not in before_2020


@pytest.mark.orthanc
def test_pagination_finds_everything_with_tiny_pages(orthanc, archive):
    whole = _by_series(list_series(_query(orthanc), env=NO_CREDENTIALS))
    paged = _by_series(list_series(_query(orthanc), page_size=1, env=NO_CREDENTIALS))
    assert paged == whole


# -- WADO-RS --------------------------------------------------------------------------------


@pytest.mark.orthanc
def test_fetch_series_writes_part10_files_with_the_uploaded_instances(orthanc, archive, tmp_path):
    query = _query(orthanc)
    series = _by_series(list_series(query, env=NO_CREDENTIALS))[archive.ct_stack.series_uid]
    paths = fetch_series(query, series, tmp_path / "s1", ref="series 1 of 3", env=NO_CREDENTIALS)

    assert [p.name for p in paths] == [f"{i:06d}.dcm" for i in range(5)]
    assert sorted(p.name for p in (tmp_path / "s1").iterdir()) == [p.name for p in paths]
    sop_uids = set()
    for path in paths:
        assert path.read_bytes()[128:132] == b"DICM"  # Part-10: preamble + magic
        ds = pydicom.dcmread(path)
        assert ds.SeriesInstanceUID == archive.ct_stack.series_uid
        assert ds.pixel_array.shape == (128, 128)
        sop_uids.add(ds.SOPInstanceUID)
    assert sop_uids == set(archive.ct_stack.sop_uids)


@pytest.mark.orthanc
def test_fetch_again_replaces_files_and_drops_stale_ones(orthanc, archive, tmp_path):
    query = _query(orthanc)
    series = _by_series(list_series(query, env=NO_CREDENTIALS))[archive.ct_single.series_uid]
    (tmp_path / "000003.dcm").write_bytes(b"left from an earlier, longer attempt")
    paths = fetch_series(query, series, tmp_path, env=NO_CREDENTIALS)
    assert [p.name for p in tmp_path.iterdir()] == ["000000.dcm"] == [p.name for p in paths]


# -- credentials ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def locked_orthanc(orthanc_factory) -> OrthancServer:
    server = orthanc_factory(users={"medssl": "s3cret-pw"})
    _upload_archive(server)
    return server


@pytest.mark.orthanc
def test_basic_auth_comes_from_env(locked_orthanc):
    query = _query(locked_orthanc)
    with pytest.raises(ConfigError, match="MEDSSL_DICOMWEB_USER") as refused:
        list_series(query, env=NO_CREDENTIALS)
    assert "401" in str(refused.value)
    with pytest.raises(ConfigError, match="401"):
        list_series(query, env={"MEDSSL_DICOMWEB_USER": "medssl",
                                "MEDSSL_DICOMWEB_PASSWORD": "wrong"})
    env = {"MEDSSL_DICOMWEB_USER": "medssl", "MEDSSL_DICOMWEB_PASSWORD": "s3cret-pw"}
    found = list_series(query, env=env)
    assert {s.modality for s in found} == {"CT", "MR"}


@pytest.mark.orthanc
def test_basic_auth_is_read_from_the_process_environment(locked_orthanc, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSSL_DICOMWEB_USER", "medssl")
    monkeypatch.setenv("MEDSSL_DICOMWEB_PASSWORD", "s3cret-pw")
    query = _query(locked_orthanc, "modality=MR")
    [series] = list_series(query)
    assert len(fetch_series(query, series, tmp_path)) == 1


class _RecordingHandler(BaseHTTPRequestHandler):
    """A QIDO stub: records Authorization headers, fails the first ``failures`` requests."""

    seen: list[str | None] = []
    failures = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        type(self).seen.append(self.headers.get("Authorization"))
        if len(type(self).seen) <= type(self).failures:
            self.send_response(503)
            self.end_headers()
            return
        body = json.dumps([]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stub_server() -> Iterator[tuple[str, type[_RecordingHandler]]]:
    handler = type("Handler", (_RecordingHandler,), {"seen": [], "failures": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"dicomweb+http://127.0.0.1:{server.server_port}/dicom-web", handler
    finally:
        server.shutdown()
        server.server_close()


def test_bearer_token_is_sent_from_env(stub_server):
    source, handler = stub_server
    assert list_series(parse_dicomweb_source(source), env={"MEDSSL_DICOMWEB_TOKEN": "tok"}) == []
    assert handler.seen == ["Bearer tok"]


def test_5xx_is_retried_then_succeeds(stub_server):
    source, handler = stub_server
    handler.failures = 2
    assert list_series(parse_dicomweb_source(source), backoff_s=0.01, env=NO_CREDENTIALS) == []
    assert len(handler.seen) == 3


@pytest.mark.parametrize(
    "env, problem",
    [
        ({"MEDSSL_DICOMWEB_TOKEN": "t", "MEDSSL_DICOMWEB_USER": "u",
          "MEDSSL_DICOMWEB_PASSWORD": "p"}, "not both"),
        ({"MEDSSL_DICOMWEB_USER": "u"}, "MEDSSL_DICOMWEB_PASSWORD is not"),
        ({"MEDSSL_DICOMWEB_PASSWORD": "p"}, "MEDSSL_DICOMWEB_USER is not"),
    ],
)
def test_inconsistent_credential_env_is_a_config_error(env, problem):
    query = parse_dicomweb_source("dicomweb+http://127.0.0.1:9/dicom-web")
    with pytest.raises(ConfigError, match=problem):
        list_series(query, env=env)


def test_url_with_embedded_credentials_is_refused_without_echoing_them():
    with pytest.raises(ConfigError, match="MEDSSL_DICOMWEB_USER") as refused:
        parse_dicomweb_source("dicomweb+https://alice:hunter2@pacs.example/dicom-web")
    assert "hunter2" not in str(refused.value) and "alice" not in str(refused.value)


# -- failures -------------------------------------------------------------------------------


def test_server_down_fails_fast_with_fetch_error_and_no_uids(tmp_path):
    query = parse_dicomweb_source(f"dicomweb+http://127.0.0.1:{_free_port()}/dicom-web")
    series = RemoteSeries("1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "CT", 1)
    started = time.monotonic()
    with pytest.raises(IngestError) as listing:
        list_series(query, env=NO_CREDENTIALS)
    with pytest.raises(IngestError) as fetching:
        fetch_series(query, series, tmp_path, ref="series 7",
                     attempts=3, backoff_s=0.1, env=NO_CREDENTIALS)
    assert time.monotonic() - started < 10
    assert listing.value.code == fetching.value.code == RejectReason.FETCH
    assert "4 attempts" in str(listing.value)
    assert str(fetching.value).startswith("[fetch_failed] series 7:")
    assert "1.2.826" not in str(fetching.value) + str(listing.value)


# -- source URLs ----------------------------------------------------------------------------


def test_parse_full_source():
    query = parse_dicomweb_source(
        "dicomweb+https://pacs.example:8443/dicom-web/?modality=mr&study_date=20200101-20201231"
        "&study=1.2.3&series=1.2.3.4"
    )
    assert query == DicomWebQuery(
        base_url="https://pacs.example:8443/dicom-web",
        modality="MR",
        study_date_range=(dt.date(2020, 1, 1), dt.date(2020, 12, 31)),
        study_uid="1.2.3",
        series_uid="1.2.3.4",
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("20200101", (dt.date(2020, 1, 1), dt.date(2020, 1, 1))),
        ("20200101-", (dt.date(2020, 1, 1), None)),
        ("-20201231", (None, dt.date(2020, 12, 31))),
    ],
)
def test_parse_open_and_single_date_ranges(text, expected):
    query = parse_dicomweb_source(f"dicomweb+http://h/dw?study_date={text}")
    assert query.study_date_range == expected
    assert query.base_url == "http://h/dw" and query.modality is None


@pytest.mark.parametrize(
    "source, problem",
    [
        ("http://127.0.0.1:8042/dicom-web", "must start with dicomweb"),
        ("dicomweb+ftp://127.0.0.1/dicom-web", "must start with dicomweb"),
        ("dicomweb+http:///dicom-web", "no host"),
        ("dicomweb+http://h:99999/dw", "invalid port"),
        ("dicomweb+http://h/dw?patient=x", "unknown parameter 'patient'"),
        ("dicomweb+http://h/dw?modality=CT&modality=MR", "given twice"),
        ("dicomweb+http://h/dw?modality=", "is empty"),
        ("dicomweb+http://h/dw?modality=C%20T", "modality"),
        ("dicomweb+http://h/dw?study_date=2020-13-01", "not a date"),
        ("dicomweb+http://h/dw?study_date=20201231-20200101", "ends before"),
        ("dicomweb+http://h/dw?study_date=-", "at least one date"),
        ("dicomweb+http://h/dw?study=1.2.x3", "study is not a DICOM UID"),
        ("dicomweb+http://h/dw?series=" + "1." * 40 + "1", "series is not a DICOM UID"),
    ],
)
def test_bad_source_urls_are_config_errors(source, problem):
    with pytest.raises(ConfigError, match=problem) as refused:
        parse_dicomweb_source(source)
    assert "1.2.x3" not in str(refused.value)
