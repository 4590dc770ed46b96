"""Spec (issue 15, item 5): a zip of many members costs time linear in its members, and
an archive past the member bound is one refusal, found before its directory is listed.

Before: every member reopened the archive (a zip of n members parsed n directories, 4,000
one-byte members took 126 s here) and every refused member got a quarantine folder and
a commit of its own.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest

from medssl.io import zip_archive
from medssl.io.sources import BadItem, SourceItem, iter_source_items
from tests.store import dicom_factory as f
from tests.store import store_view as sv
from tests.store.ingest_run import run


def _junk_zip(path: Path, members: int, extra: dict[str, bytes] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(members):
            zf.writestr(f"m/{i:06d}.dcm", b"x")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def test_an_archive_past_the_member_bound_is_one_refusal_and_nothing_is_read(tmp_path, monkeypatch):
    _junk_zip(tmp_path / "src" / "export.zip", 1300)  # the end record alone says it is too many
    opened = []
    monkeypatch.setattr(
        zip_archive.zipfile, "ZipFile", lambda *a, **k: opened.append(a) or pytest.fail("listed")
    )
    summary = run(tmp_path / "src", tmp_path / "store", max_zip_members=100)
    rows = sv.rejected(tmp_path / "store")
    assert [(r["code"], r["unit"]) for r in rows] == [("bad_archive", "file")]
    assert (
        "1300 entries, more than the bound of 100" in rows[0]["message"]
        and "--max-zip-members" in rows[0]["message"]
    )
    assert summary.files == 0 and opened == []
    assert sv.files(tmp_path / "store", "quarantine") == []


def test_the_bound_counts_files_exactly_once_listed(tmp_path):
    _junk_zip(tmp_path / "src" / "export.zip", 101)
    summary = run(tmp_path / "src", tmp_path / "store", max_zip_members=100)
    assert summary.rejected == {"bad_archive": 1} and summary.files == 0


def test_the_bound_counts_files_not_folders(tmp_path):
    archive = _junk_zip(tmp_path / "a.zip", 3)  # plus the implied folder entry below
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("m/", b"")
    items = list(iter_source_items(archive, max_zip_members=3))
    assert all(isinstance(i, SourceItem) for i in items) and len(items) == 3


def test_each_process_opens_an_archive_once(tmp_path, monkeypatch):
    archive = _junk_zip(tmp_path / "src" / "export.zip", 200)
    zip_archive.close_archives()
    real, opened = zipfile.ZipFile, []

    def counting(*args, **kwargs):
        opened.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(zip_archive.zipfile, "ZipFile", counting)
    run(
        tmp_path / "src", tmp_path / "store"
    )  # one worker: listing, scanning and refusing in this process
    assert len(sv.rejected(tmp_path / "store")) == 200
    assert opened == [str(archive)]


def test_a_changed_archive_is_opened_afresh(tmp_path):
    archive = _junk_zip(tmp_path / "a.zip", 2)
    assert SourceItem(str(archive), "m/000000.dcm").read_bytes() == b"x"
    time.sleep(0.01)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("m/000000.dcm", b"changed")
    assert SourceItem(str(archive), "m/000000.dcm").read_bytes() == b"changed"


def test_refused_members_make_rows_not_quarantine_folders_and_a_good_member_converts(tmp_path):
    series = f.to_bytes(f.make_series(1)[0])
    _junk_zip(tmp_path / "src" / "export.zip", 50, extra={"good/one.dcm": series})
    summary = run(tmp_path / "src", tmp_path / "store")
    assert summary.written == 1 and summary.rejected == {"not_an_image": 50}
    assert sv.files(tmp_path / "store", "quarantine") == []


@pytest.mark.parametrize("members", [1000, 4000])
def test_junk_members_cost_linear_time(tmp_path, members):
    """Measured before: 1,000 members 18.5 s, 4,000 members 126 s (2 busy cores)."""
    _junk_zip(tmp_path / "src" / "export.zip", members)
    start = time.perf_counter()
    summary = run(tmp_path / "src", tmp_path / "store")
    seconds = time.perf_counter() - start
    assert summary.rejected == {"not_an_image": members}
    assert seconds < 0.005 * members + 2, f"{members} members took {seconds:.1f} s"


def test_an_unreadable_archive_file_is_one_row(tmp_path):
    bad = tmp_path / "src" / "broken.zip"
    bad.parent.mkdir()
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    entries = list(iter_source_items(tmp_path / "src"))
    assert len(entries) == 1 and isinstance(entries[0], BadItem)
    assert entries[0].error.code == "bad_archive" and entries[0].item.member is None
