"""The key holder finds the original of a refused file from its opaque reference, nobody else."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _medssl(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medssl", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_locate_maps_a_rejected_reference_back_to_its_file_with_the_key_only(tmp_path):
    src = tmp_path / "src" / "Doe_John"
    src.mkdir(parents=True)
    (src / "report.dcm").write_bytes(b"not an image at all\n" * 10)
    key, other_key = tmp_path / "k", tmp_path / "other"
    assert _medssl("ingest", tmp_path / "src", "--out", tmp_path / "store", "--key-file", key, "--no-progress").returncode == 0
    con = sqlite3.connect(tmp_path / "store" / "manifest.sqlite")
    (ref,) = con.execute("SELECT source_ref FROM rejected").fetchone()
    con.close()
    assert "Doe" not in ref and len(ref) >= 12
    found = _medssl("ingest", tmp_path / "src", "--out", tmp_path / "store", "--key-file", key, "--locate", ref[:12])
    assert found.returncode == 0 and found.stdout.strip() == str(src / "report.dcm")
    assert _medssl("ingest", tmp_path / "src", "--out", tmp_path / "x", "--key-file", other_key, "--locate", ref[:12]).stdout.strip() == ""
