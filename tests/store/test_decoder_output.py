"""Spec (issue 15, item 10): what a failing pixel decoder prints ends in the rejected row, not on stderr.

Before: pydicom logged each failing plugin with a traceback (83 in the red-team run) and
pylibjpeg-rle's Rust code printed panic backtraces to stderr, while the run went on.
Now ``medssl ingest`` prints neither; the row's message says, in one short line, what the
decoder said.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from medssl.io.decoder_output import MAX_SUMMARY, captured_decoder_output
from tests.store import dicom_factory as f
from tests.store import store_view as sv

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def _rle_copy(seed: int) -> tuple[bytes, str]:
    """MR_small_RLE with fresh UIDs and a few pixel-data bytes changed; how its decode ends."""
    ds = f.read_template("MR_small_RLE.dcm")
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = bytearray(buf.getvalue())
    start = data.find(PIXEL_DATA_TAG) + 12
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(start + 64, len(data))] = rng.randrange(256)
    try:
        with captured_decoder_output():
            _ = pydicom.dcmread(io.BytesIO(bytes(data))).pixel_array
        outcome = "decodes"
    except BaseException as exc:  # noqa: BLE001 - a Rust panic is a BaseException
        outcome = "panic" if "Panic" in type(exc).__name__ else "error"
    return bytes(data), outcome


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    pytest.importorskip("rle", reason="pylibjpeg-rle is not installed")
    src = tmp_path_factory.mktemp("decoders") / "src"
    src.mkdir()
    found: dict[str, int] = {}
    for seed in range(400):
        data, outcome = _rle_copy(seed)
        if outcome != "decodes" and found.get(outcome, 0) < 2:
            (src / f"{outcome}{seed}.dcm").write_bytes(data)
            found[outcome] = found.get(outcome, 0) + 1
        if found.get("panic", 0) == 2 and found.get("error", 0) == 2:
            break
    if found.get("panic", 0) < 1:
        pytest.skip("no mutant made the installed RLE decoder panic")
    return src


def test_decoder_tracebacks_and_panics_stay_off_stderr(hostile, tmp_path):
    env = {**os.environ, "RUST_BACKTRACE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "medssl.cli",
        "ingest",
        str(hostile),
        "--out",
        str(tmp_path / "store"),
        "--key-file",
        str(tmp_path / "key"),
        "--workers",
        "2",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for noise in ("Traceback", "panicked at", "stack backtrace", "RUST_BACKTRACE"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    rows = sv.rejected(tmp_path / "store")
    assert len(rows) == len(list(hostile.iterdir()))
    assert {r["code"] for r in rows} <= {"decode_failed", "malformed", "truncated"}
    panics = [r["message"] for r in rows if "decoder panicked:" in r["message"]]
    assert panics, [r["message"] for r in rows]
    assert all(len(m) < MAX_SUMMARY + 80 for m in panics)
    assert "\n\n" not in proc.stderr  # nothing of the panic is left, not even its blank line


def test_what_is_not_the_decoders_goes_back_to_stderr(capfd):
    with captured_decoder_output() as said:
        os.write(2, b"progress line\n")
        os.write(
            2,
            b"thread '<unnamed>' panicked at src/lib.rs:1:2:\nindex out of bounds: the len is 3 but the index is 4\nnote: run with `RUST_BACKTRACE=1`\n",
        )
    assert said.panic == "index out of bounds: the len is 3 but the index is 4"
    assert capfd.readouterr().err == "progress line\n"


def test_pydicom_failure_records_are_kept_short_and_without_uids(caplog):
    import logging

    with captured_decoder_output() as said:
        try:
            raise ValueError("frame of 1.2.840.113619.2.55.3 is " + "x" * 500)
        except ValueError as exc:  # what pydicom's decoder loop does with a failing plugin
            logging.getLogger("pydicom.pixels.decoders.base").exception(exc)  # noqa: TRY401
    assert said.records and said.summary.startswith("ValueError: frame of <uid> is")
    assert len(said.summary) <= MAX_SUMMARY
    assert "Traceback" not in caplog.text
