"""Spec (issue 15, found by the ingest fuzz suite): a zip member whose compressed bytes are
damaged, or whose header names a compression method zipfile lacks, is one ``bad_archive``
row; before, ``zlib.error`` (no ``OSError``) escaped ``read_member`` and the member became
``internal_error``. The other members of the archive are still read.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from medssl.errors import IngestError
from medssl.io.zip_archive import close_archives, read_member
from medssl.types import RejectReason
from tests.store import dicom_factory as f
from tests.store import store_view as sv
from tests.store.ingest_run import run

ZIP_METHOD = 8  # offset of the compression method in a local header and (+2) in a central one


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    close_archives()  # a file rewritten in place: no process keeps the old listing
    return path


def _damage(path: Path, member: str, *, method: int | None = None) -> None:
    """Make ``member``'s deflate stream start with a reserved block type, or give it ``method``."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    local = info.header_offset
    start = local + 30 + int.from_bytes(raw[local + 26 : local + 28], "little") + int.from_bytes(raw[local + 28 : local + 30], "little")
    if method is None:
        raw[start] = 0x07  # BFINAL=1, BTYPE=11: "invalid block type"
    else:
        central = raw.rindex(b"PK\x01\x02")  # its directory entry (a one-member archive)
        raw[local + ZIP_METHOD : local + ZIP_METHOD + 2] = method.to_bytes(2, "little")
        raw[central + ZIP_METHOD + 2 : central + ZIP_METHOD + 4] = method.to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    close_archives()


@pytest.mark.parametrize(("method", "says"), [(None, "do not decompress"), (99, "unsupported method")])
def test_a_member_that_does_not_decompress_is_a_bad_archive(tmp_path, method, says):
    path = _zip(tmp_path / "a.zip", {"x.dcm": bytes(range(256)) * 64})
    _damage(path, "x.dcm", method=method)
    with pytest.raises(IngestError) as caught:
        read_member(str(path), "x.dcm", 1 << 20)
    assert caught.value.code == RejectReason.BAD_ARCHIVE
    assert says in caught.value.message  # not "encrypted": NotImplementedError is a RuntimeError


def test_ingest_refuses_the_damaged_member_and_reads_its_neighbour(tmp_path):
    series = f.make_series(1)
    good = f.to_bytes(series[0])
    path = _zip(tmp_path / "src" / "export.zip", {"a/bad.dcm": good, "b/good.dcm": good})
    _damage(path, "a/bad.dcm")
    summary = run(tmp_path / "src", tmp_path / "store")
    assert summary.rejected == {"bad_archive": 1}
    assert summary.written == 1
    assert [r["code"] for r in sv.rejected(tmp_path / "store")] == ["bad_archive"]
