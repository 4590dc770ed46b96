"""No identifier leaves ingest: a canary planted everywhere a hospital export can hide one.

The canary goes into every free-text element (PN, LO, SH, LT, ST, UT, UC, AE) at every
sequence depth - except the technical attributes of ``RETAINED_TEXT``, which the profile
keeps on purpose and documents - into a private block, a nested sequence, the source
folder's name and every file name. After a real ``medssl ingest`` (subprocess, as a user
runs it) the canary and every source UID must be absent from every byte under STORE
(gzip members decompressed), from the manifest, and from stdout/stderr.
"""

from __future__ import annotations

import gzip
import os
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from medssl.deid.actions import RETAINED_TEXT

CANARY = "ZQXCANARY"
TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC", "AE"}


def _plant(ds: Dataset, uids: set[str]) -> None:
    """Canary into every free-text element, recursively; collect every UID value."""
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _plant(item, uids)
        elif elem.VR == "UI" and elem.value:
            for v in elem.value if isinstance(elem.value, list) else [elem.value]:
                if not str(v).startswith("1.2.840.10008."):  # registered SOP class / syntax UIDs are not identifiers
                    uids.add(str(v))
        elif elem.VR in TEXT_VRS and elem.keyword not in RETAINED_TEXT and elem.tag.group != 0x0002:
            elem.value = CANARY


def _canary_dataset(src: str, series_uid: str | None = None, z: float | None = None) -> tuple[Dataset, set[str]]:
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if series_uid:
        ds.SeriesInstanceUID = series_uid
    if z is not None:
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], z]
    ds.PatientName = f"{CANARY}^JOHN"
    ds.PatientID = f"{CANARY}-ID"
    ds.InstitutionName = CANARY
    ds.ImageComments = f"patient {CANARY} says hello"
    ds.RetrieveAETitle = CANARY
    ds.SoftwareVersions = CANARY
    ds.StudyDescription = CANARY
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = generate_uid()
    ref.PatientName = CANARY
    inner = Dataset()
    inner.RequestedProcedureDescription = CANARY
    inner.RequestedProcedureID = CANARY
    inner.ReferencedStudySequence = Sequence([ref])
    ds.RequestAttributesSequence = Sequence([inner])
    other = Dataset()
    other.PatientID = CANARY
    other.IssuerOfPatientID = CANARY
    ds.OtherPatientIDsSequence = Sequence([other])
    block = ds.private_block(0x0011, f"{CANARY} CREATOR", create=True)
    block.add_new(0x01, "LO", CANARY)
    block.add_new(0x02, "UT", f"free text {CANARY}")
    uids: set[str] = set()
    _plant(ds, uids)
    return ds, uids


@pytest.fixture(scope="module")
def canary_source(tmp_path_factory) -> tuple[Path, set[str]]:
    root = tmp_path_factory.mktemp("src") / f"{CANARY}_Doe_John"
    root.mkdir()
    uids: set[str] = set()
    series = generate_uid()
    for k in range(4):
        ds, found = _canary_dataset(get_testdata_file("CT_small.dcm"), series_uid=series, z=-100.0 + 5 * k)
        uids |= found
        ds.save_as(root / f"{CANARY}_{k:03d}.dcm")
    ds, found = _canary_dataset(get_testdata_file("MR_small.dcm"), series_uid=generate_uid())
    uids |= found
    ds.save_as(root / f"{CANARY}_mr.dcm")
    with zipfile.ZipFile(root / f"{CANARY}.zip", "w") as zf:
        ds, found = _canary_dataset(get_testdata_file("MR_small.dcm"), series_uid=generate_uid())
        uids |= found
        path = root / "tmp.dcm"
        ds.save_as(path)
        zf.write(path, f"{CANARY}/{CANARY}_zip.dcm")
        path.unlink()
    # refused inputs must not leak either: a burned-in image (quarantined copy) and a truncated file
    ds, found = _canary_dataset(get_testdata_file("MR_small.dcm"), series_uid=generate_uid())
    ds.BurnedInAnnotation = "YES"
    uids |= found
    ds.save_as(root / f"{CANARY}_burned.dcm")
    ds, found = _canary_dataset(get_testdata_file("MR_small.dcm"), series_uid=generate_uid())
    uids |= found
    ds.save_as(root / f"{CANARY}_truncated.dcm")
    data = (root / f"{CANARY}_truncated.dcm").read_bytes()
    (root / f"{CANARY}_truncated.dcm").write_bytes(data[: len(data) - 3000])
    return root, uids


def _ingest(src: Path, store: Path, key: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "medssl.cli", "-v", "ingest", str(src), "--out", str(store), "--key-file", str(key), "--workers", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )


def _all_bytes(store: Path):
    for path in store.rglob("*"):
        yield path.relative_to(store).as_posix().encode(), "path"
        if path.is_file():
            data = path.read_bytes()
            yield data, str(path.relative_to(store))
            if data[:2] == b"\x1f\x8b":
                yield gzip.decompress(data), f"{path.relative_to(store)} (decompressed)"


def test_no_canary_and_no_source_uid_anywhere_after_ingest(canary_source, tmp_path):
    src, uids = canary_source
    store, key = tmp_path / "store", tmp_path / "project.key"
    result = _ingest(src, store, key)
    assert result.returncode == 0, result.stderr[-2000:]
    con = sqlite3.connect(store / "manifest.sqlite")
    n_volumes = con.execute("SELECT COUNT(*) FROM volumes").fetchone()[0]
    codes = {row[0] for row in con.execute("SELECT code FROM rejected")}
    con.close()
    assert n_volumes == 3  # the CT series, the MR slice, the zipped MR slice
    assert {"burned_in_annotation", "truncated"} <= codes
    assert any((store / "quarantine").rglob("*.dcm")), "the burned-in image is kept, de-identified, for review"
    needles = [CANARY.encode(), CANARY.lower().encode(), *(u.encode() for u in uids)]
    for data, where in _all_bytes(store):
        for needle in needles:
            assert needle not in data, f"{needle[:20]!r} found in {where}"
    for stream in (result.stdout, result.stderr):
        assert CANARY not in stream.upper()
        assert src.name not in stream
        for uid in uids:
            assert uid not in stream


def test_same_key_gives_identical_ids_and_another_key_unlinkable_ones(canary_source, tmp_path):
    src, _ = canary_source
    key = tmp_path / "a.key"

    def ids(store: Path) -> list[tuple]:
        con = sqlite3.connect(store / "manifest.sqlite")
        rows = con.execute("SELECT volume_id, patient, study, series, sha256 FROM volumes ORDER BY volume_id").fetchall()
        con.close()
        return rows

    assert _ingest(src, tmp_path / "s1", key).returncode == 0
    assert _ingest(src, tmp_path / "s2", key).returncode == 0
    first, second = ids(tmp_path / "s1"), ids(tmp_path / "s2")
    assert first == second and len(first) == 3
    other_key = tmp_path / "b.key"
    assert _ingest(src, tmp_path / "s3", other_key).returncode == 0
    third = ids(tmp_path / "s3")
    assert not ({r[0] for r in first} & {r[0] for r in third})
    assert not ({r[1] for r in first} & {r[1] for r in third})


def test_retained_text_is_only_technical_vocabulary():
    """The allow-list is reviewed, not grown by accident: no identifying attribute in it."""
    identifying = {"PatientName", "PatientID", "InstitutionName", "StationName", "OperatorsName", "StudyDescription", "SeriesDescription", "ImageComments"}
    assert not (RETAINED_TEXT & identifying)
