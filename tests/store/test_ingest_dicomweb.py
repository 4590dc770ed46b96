"""Ingest from a PACS over DICOMweb: a real Orthanc started by the test, a study uploaded
through its REST API, fetched by QIDO-RS/WADO-RS, converted like local files."""

from __future__ import annotations

import sqlite3

import pytest

from medssl.store.ingest import IngestOptions, ingest
from tools.phantom import make_ct_phantom, make_mr_phantom, write_ct_series, write_mr_series

pytestmark = pytest.mark.orthanc
KEY = b"k" * 32


@pytest.fixture(scope="module")
def series_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("pacs")
    ct = write_ct_series(make_ct_phantom((40, 36, 12), (4.0, 4.0, 5.0), seed=21), root / "ct", patient_id="PACS1", transfer_syntax="JPEG2000Lossless", seed=1)
    mr = write_mr_series(make_mr_phantom((40, 36, 12), (4.0, 4.0, 5.0), seed=22), root / "mr", patient_id="PACS2", seed=2)
    return root, ct, mr


def _rows(store):
    con = sqlite3.connect(store / "manifest.sqlite")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM volumes ORDER BY volume_id")]
    con.close()
    return rows


def test_a_study_in_orthanc_ingests_like_the_same_files_on_disk(orthanc, series_files, tmp_path):
    root, ct, mr = series_files
    orthanc.clear()
    for path in ct + mr:
        orthanc.upload(path)
    opts = IngestOptions(workers=1, progress=False)
    remote = ingest([f"{orthanc.source}?modality=CT"], tmp_path / "remote", KEY, opts)
    assert remote.written == 1 and not remote.rejected
    local = ingest([root / "ct"], tmp_path / "local", KEY, opts)
    assert local.written == 1
    (r,), (l,) = _rows(tmp_path / "remote"), _rows(tmp_path / "local")
    assert r["source_kind"] == "dicomweb" and l["source_kind"] == "dicom_files"
    for column in ("volume_id", "sha256", "affine", "shape", "spacing", "patient", "series"):
        assert r[column] == l[column], column
    # a rerun fetches nothing and writes nothing
    again = ingest([f"{orthanc.source}?modality=CT"], tmp_path / "remote", KEY, opts)
    assert again.written == 0 and again.files == 0
    # without the filter the MR series comes too
    everything = ingest([orthanc.source], tmp_path / "remote", KEY, opts)
    assert everything.written == 1
    assert {row["modality"] for row in _rows(tmp_path / "remote")} == {"CT", "MR"}


def test_an_unreachable_pacs_is_recorded_and_other_sources_still_ingest(series_files, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root, _, _ = series_files
    summary = ingest([f"dicomweb+http://127.0.0.1:{port}/dicom-web", root / "mr"], tmp_path / "s", KEY, IngestOptions(progress=False))
    assert summary.written == 1
    assert summary.rejected == {"fetch_failed": 1}
