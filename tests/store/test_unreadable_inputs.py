"""Spec (issue 15, items 6 and 7): every input ingest cannot use is a row with its own reason.

Before: an empty TransferSyntaxUID and a file that cannot be opened landed as
``internal_error``; a folder that cannot be listed was skipped with no row at all; a DICOM
series with PixelSpacing 1e38 was written. Tests run as root, who reads anything, so
permission failures are simulated where the OS would not produce them (and produced for
real when the test runs as another user).
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import pytest

from medssl.io.sources import BadItem, iter_source_items
from tests.store import dicom_factory as f
from tests.store import store_view as sv
from tests.store.ingest_run import run


def _codes(store: Path) -> list[str]:
    return sorted(r["code"] for r in sv.rejected(store))


def test_an_empty_transfer_syntax_is_malformed_not_a_bug(tmp_path):
    ds = f.make_series(1)[0]
    ds.file_meta.TransferSyntaxUID = ""
    (tmp_path / "src").mkdir()
    ds.save_as(tmp_path / "src" / "a.dcm", enforce_file_format=False)
    run(tmp_path / "src", tmp_path / "store")
    rows = sv.rejected(tmp_path / "store")
    assert [r["code"] for r in rows] == ["malformed"]
    assert "(0002,0010)" in rows[0]["message"] and "TransferSyntaxUID" in rows[0]["message"]


def test_an_unknown_transfer_syntax_is_unsupported(tmp_path):
    ds = f.make_series(1)[0]
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"
    (tmp_path / "src").mkdir()
    ds.save_as(tmp_path / "src" / "a.dcm", enforce_file_format=False)
    run(tmp_path / "src", tmp_path / "store")
    assert _codes(tmp_path / "store") == ["unsupported"]


def _unreadable(monkeypatch, *names: str) -> None:
    """``open`` of a file with one of ``names`` fails as a chmod 000 file does for a non-root user."""
    real = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).name in names:
            raise PermissionError(13, "Permission denied")
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)


def test_a_file_that_cannot_be_opened_is_unreadable(tmp_path, monkeypatch):
    f.write(f.make_series(2), tmp_path / "src")
    (tmp_path / "src" / "locked.dcm").write_bytes(f.to_bytes(f.make_series(1)[0]))
    _unreadable(monkeypatch, "locked.dcm")
    summary = run(tmp_path / "src", tmp_path / "store")
    rows = sv.rejected(tmp_path / "store")
    assert summary.written == 1 and [r["code"] for r in rows] == ["unreadable"]
    assert rows[0]["message"] == "file cannot be read (PermissionError)"


def test_a_folder_that_cannot_be_listed_is_a_row(tmp_path, monkeypatch):
    f.write(f.make_series(2), tmp_path / "src" / "open")
    f.write(f.make_series(2), tmp_path / "src" / "locked")
    real = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    summary = run(tmp_path / "src", tmp_path / "store")
    rows = sv.rejected(tmp_path / "store")
    assert summary.written == 1 and [r["code"] for r in rows] == ["unreadable"]
    assert "folder cannot be listed" in rows[0]["message"]


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root lists a chmod 000 folder anyway (simulated above)"
)
def test_a_chmod_000_folder_is_a_row(tmp_path):
    f.write(f.make_series(2), tmp_path / "src" / "locked")
    (tmp_path / "src" / "locked").chmod(0)
    try:
        entries = list(iter_source_items(tmp_path / "src"))
    finally:
        (tmp_path / "src" / "locked").chmod(0o755)
    assert [e.error.code for e in entries if isinstance(e, BadItem)] == ["unreadable"]


def test_a_pipe_in_the_tree_is_a_row_and_never_opened(tmp_path):
    (tmp_path / "src").mkdir()
    os.mkfifo(tmp_path / "src" / "pipe.dcm")  # opening it would block the run
    run(tmp_path / "src", tmp_path / "store")
    assert _codes(tmp_path / "store") == ["not_an_image"]


def test_a_dicom_series_with_impossible_spacing_is_refused_before_decoding(tmp_path):
    datasets = f.make_series(3)
    for ds in datasets:
        ds.PixelSpacing = ["50000", "50000"]  # finite, so it passes the scan; no body has it
    f.write(datasets, tmp_path / "src")
    summary = run(tmp_path / "src", tmp_path / "store")
    assert summary.written == 0 and _codes(tmp_path / "store") == ["geometry"]


def test_a_hostile_transfer_syntax_is_not_quoted_in_the_row(tmp_path):
    ds = f.make_series(1)[0]
    ds.file_meta.TransferSyntaxUID = "Jane Doe"
    (tmp_path / "src").mkdir()
    ds.save_as(tmp_path / "src" / "a.dcm", enforce_file_format=False)
    run(tmp_path / "src", tmp_path / "store")
    assert "Jane" not in sv.rejected(tmp_path / "store")[0]["message"]
