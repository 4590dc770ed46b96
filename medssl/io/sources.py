"""Enumerate the files behind ingest sources: folders, zip files, single files.

A source item is a small picklable reference (a path, or a zip path and member name) so
that worker processes open it themselves. Nothing is ever extracted to disk by the name an
archive gives, so member names cannot traverse out of anything; unsafe names are still
refused, because a genuine export never has them.
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from medssl.errors import IngestError
from medssl.types import PathLike, RejectReason

MAX_MEMBER_BYTES = 4 << 30  # one archived file larger than this is not a medical image slice
MAX_COMPRESSION_RATIO = 200  # DICOM compresses ~2-10x; far more is a zip bomb


class FileFormat(StrEnum):
    DICOM = "dicom"
    NIFTI = "nifti"
    NRRD = "nrrd"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class BadItem:
    """A file or archive member refused before it was read (unsafe name, bomb, bad zip)."""

    item: SourceItem
    error: IngestError


@dataclass(frozen=True, order=True)
class SourceItem:
    """One file to read: ``path`` on disk, or ``member`` inside the zip at ``path``."""

    path: str
    member: str | None = None

    @property
    def in_zip(self) -> bool:
        return self.member is not None

    def read_bytes(self, limit: int = MAX_MEMBER_BYTES) -> bytes:
        """The whole file; refuses anything above ``limit`` bytes before reading it."""
        if self.member is None:
            size = os.stat(self.path).st_size
            if size > limit:
                raise IngestError(RejectReason.TOO_LARGE, f"file of {size} bytes exceeds {limit}")
            with open(self.path, "rb") as f:
                return f.read()
        try:
            with zipfile.ZipFile(self.path) as zf:
                info = zf.getinfo(self.member)
                _check_member(info, limit)
                with zf.open(info) as f:
                    data = f.read(info.file_size + 1)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, KeyError) as exc:
            raise IngestError(RejectReason.BAD_ARCHIVE, f"archive member unreadable ({type(exc).__name__})") from None
        except RuntimeError as exc:  # encrypted members
            raise IngestError(RejectReason.BAD_ARCHIVE, "archive member is encrypted") from exc
        if len(data) != info.file_size:
            raise IngestError(RejectReason.BAD_ARCHIVE, "archive member size differs from its directory entry")
        return data

    def suffix(self) -> str:
        name = (self.member or self.path).lower()
        for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".zip"):
            if name.endswith(ext):
                return ext
        return ""


def sniff_format(head: bytes, suffix: str = "") -> FileFormat:
    """Decide the format from the first bytes (>= 352), never from the name alone.

    DICOM Part 10 has ``DICM`` at offset 128; raw (preamble-less) DICOM starts with a
    group 0002/0008 tag. NIfTI-1/2 has sizeof_hdr 348/540 (either endianness) and its
    magic; gzipped NIfTI is recognised by suffix + gzip magic. NRRD starts with ``NRRD000``.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return FileFormat.DICOM
    if head[:7] == b"NRRD000":
        return FileFormat.NRRD
    if len(head) >= 348:
        le = int.from_bytes(head[:4], "little")
        be = int.from_bytes(head[:4], "big")
        if (le in (348, 540) or be in (348, 540)) and (head[344:347] in (b"n+1", b"ni1") or head[4:7] in (b"n+2", b"ni2")):
            return FileFormat.NIFTI
    if head[:2] == b"\x1f\x8b" and suffix == ".nii.gz":
        return FileFormat.NIFTI
    if len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00") and head[2:4] in (b"\x00\x00", b"\x01\x00", b"\x05\x00", b"\x08\x00", b"\x16\x00", b"\x18\x00", b"\x20\x00"):
        return FileFormat.DICOM  # raw little-endian dataset without preamble
    return FileFormat.UNKNOWN


def iter_source_items(source: PathLike) -> Iterator[SourceItem | BadItem]:
    """Every file behind one local source, in a stable order.

    Folders are walked recursively (symlinks to folders are not followed, so a loop
    cannot hang ingest); zip files anywhere are opened and their members listed. An
    unreadable archive yields an :class:`IngestError` in place of its members.
    """
    root = Path(source)
    if root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                yield from _file_items(os.path.join(dirpath, name))
    elif root.exists():
        yield from _file_items(str(root))
    else:
        raise FileNotFoundError(f"source does not exist: {root}")


def _file_items(path: str) -> Iterator[SourceItem | BadItem]:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # dangling link or vanished file: nothing to read
    if not stat.S_ISREG(mode):
        return
    if path.lower().endswith(".zip") or _is_zip(path):
        yield from _zip_items(path)
    else:
        yield SourceItem(path)


def _is_zip(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _zip_items(path: str) -> Iterator[SourceItem | BadItem]:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        yield BadItem(SourceItem(path), IngestError(RejectReason.BAD_ARCHIVE, f"zip archive unreadable ({type(exc).__name__})"))
        return
    for info in sorted(infos, key=lambda i: i.filename):
        if info.is_dir():
            continue
        try:
            _check_member(info, MAX_MEMBER_BYTES)
        except IngestError as err:
            yield BadItem(SourceItem(path, info.filename), err)
            continue
        yield SourceItem(path, info.filename)


def _check_member(info: zipfile.ZipInfo, limit: int) -> None:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or ".." in name.split("/") or "\x00" in name or (len(name) > 1 and name[1] == ":"):
        raise IngestError(RejectReason.BAD_ARCHIVE, "archive member with an unsafe path (absolute or '..')")
    if info.file_size > limit:
        raise IngestError(RejectReason.TOO_LARGE, f"archive member of {info.file_size} bytes exceeds {limit}")
    if info.compress_size and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO and info.file_size > (16 << 20):
        raise IngestError(RejectReason.BAD_ARCHIVE, f"archive member expands {info.file_size // info.compress_size}x: refused as a zip bomb")
