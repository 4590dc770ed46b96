"""Spec: an ingest killed with SIGKILL at any moment resumes, on rerun, to the store an uninterrupted run makes.

The source holds 30 small series (CT_small and MR_small copies with their own series
UIDs), a series with a missing slice and a text file named .dcm, so the store ends
with volumes, refusals and quarantine folders. The command is killed (SIGKILL to its
whole process group) while scanning, right after its first volume, and midway.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.store import dicom_factory as f
from tests.store import store_view as sv

N_SERIES = 30


def command(source: Path, store: Path, key: Path, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "medssl.cli",
        "ingest",
        str(source),
        "--out",
        str(store),
        "--key-file",
        str(key),
        "--workers",
        str(workers),
        "--no-progress",
    ]


def run_to_completion(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "src"
    for i in range(N_SERIES):
        f.write_series(root / f"series{i:02d}", 3 + i % 3, template=f.MR if i % 3 == 0 else f.CT)
    f.write([ds for k, ds in enumerate(f.make_series(5)) if k != 2], root / "gap")
    (root / "notes.dcm").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def reference(source: Path) -> tuple[Path, Path]:
    """The store of an uninterrupted run, and the key file it used (created by that run)."""
    key = source.parent / "project.key"
    store = source.parent / "uninterrupted"
    run_to_completion(command(source, store, key, workers=1))
    return store, key


def volumes_so_far(store: Path) -> int:
    """Volume rows committed so far; -1 while the manifest does not exist or is not set up."""
    if not (store / "manifest.sqlite").exists():
        return -1
    try:
        db = sqlite3.connect(f"file:{store / 'manifest.sqlite'}?mode=ro", uri=True, timeout=1)
        try:
            if not db.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone():
                return -1
            return db.execute("SELECT count(*) FROM volumes").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return -1


def kill_when(cmd: list[str], store: Path, enough: int, timeout: float = 120) -> int:
    """Start ``cmd``, SIGKILL its process group once ``enough`` volume rows exist; rows seen then."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            seen = volumes_so_far(store)
            if seen >= enough:
                break
            time.sleep(0.002)
        alive = proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert alive, (
        "the run ended before it could be killed: the test lost its race, make the source larger"
    )
    return seen


def without(rows: list[dict], *columns: str) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in columns} for row in rows]


def quarantine_reasons(store: Path) -> dict[str, dict]:
    return {
        p.name: json.loads((p / "reason.json").read_text())
        for p in (store / "quarantine").iterdir()
    }


@pytest.mark.parametrize(
    ("enough", "workers"),
    [(0, 1), (1, 1), (N_SERIES // 2, 1), (N_SERIES // 3, 2)],
    ids=["while-scanning", "after-first-volume", "midway", "midway-two-workers"],
)
def test_a_killed_ingest_resumes_to_the_uninterrupted_store(
    source, reference, tmp_path, enough, workers
):
    expected, key = reference
    store = tmp_path / "store"
    cmd = command(source, store, key, workers)
    seen = kill_when(cmd, store, enough)
    assert seen < N_SERIES, "killed before the end"

    run_to_completion(cmd)

    assert without(sv.volumes(store), "created_at") == without(sv.volumes(expected), "created_at")
    fields = ("source_ref", "unit", "code", "message")
    assert {tuple(r[k] for k in fields) for r in sv.rejected(store)} == {
        tuple(r[k] for k in fields) for r in sv.rejected(expected)
    }
    assert sv.file_digests(store, "volumes") == sv.file_digests(expected, "volumes")
    assert quarantine_reasons(store) == quarantine_reasons(expected)
    assert sv.temporaries(store) == []
    assert len(sv.volumes(store)) == N_SERIES
    assert {r["code"] for r in sv.rejected(store)} == {"missing_slices", "not_an_image"}
