"""Enumerate the files behind ingest sources: folders, zip files, single files.

A source item is a small picklable reference (a path, or a zip path and member name) so
that worker processes open it themselves. Nothing is ever extracted to disk by the name an
archive gives, so member names cannot traverse out of anything; unsafe names are still
refused, because a genuine export never has them.

What cannot be read is said, never skipped silently: a folder that cannot be listed or a
file that cannot be opened is a :class:`BadItem` (``unreadable``), and so is a symbolic
link to a file outside the given sources (``link_outside``), which is not even opened
unless the caller allows it (``follow_links``, ``medssl ingest --follow-links``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from medssl.errors import IngestError
from medssl.io.zip_archive import (
    MAX_MEMBER_BYTES,
    MAX_ZIP_MEMBERS,
    check_count,
    check_member,
    declared_members,
    open_archive,
    read_member,
)
from medssl.types import PathLike, RejectReason

__all__ = ["MAX_MEMBER_BYTES", "MAX_ZIP_MEMBERS", "BadItem", "FileFormat", "SourceItem", "iter_source_items", "sniff_format"]



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
        if self.member is not None:
            return read_member(self.path, self.member, limit)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > limit:
                    raise IngestError(RejectReason.TOO_LARGE, f"file of {size} bytes exceeds {limit}")
                return f.read(limit + 1)
        except OSError as exc:  # permissions, I/O errors, a file gone since it was listed
            raise IngestError(RejectReason.UNREADABLE, f"file cannot be read ({type(exc).__name__})") from None

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


def iter_source_items(
    source: PathLike,
    *,
    roots: Sequence[PathLike] | None = None,
    follow_links: bool = False,
    max_zip_members: int = MAX_ZIP_MEMBERS,
) -> Iterator[SourceItem | BadItem]:
    """Every file behind one local source, in a stable order.

    Folders are walked recursively (symlinks to folders are not followed, so a loop
    cannot hang ingest); zip files anywhere are opened and their members listed. An
    unreadable archive, or one of more than ``max_zip_members`` entries, is one
    :class:`BadItem` in place of its members. A symbolic link to a file is followed only
    when its target lies inside ``roots`` (default: ``source`` itself) or ``follow_links``.
    """
    root = Path(source)
    inside = [os.path.realpath(r) for r in (roots if roots is not None else [source])]
    if not root.exists():
        raise FileNotFoundError(f"source does not exist: {root}")
    if not root.is_dir():
        yield from _file_items(str(root), inside, follow_links, max_zip_members)
        return
    unlisted: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted.append, followlinks=False):
        yield from _unlisted(unlisted)
        dirnames.sort()
        for name in sorted(filenames):
            yield from _file_items(os.path.join(dirpath, name), inside, follow_links, max_zip_members)
    yield from _unlisted(unlisted)


def _unlisted(errors: list[OSError]) -> Iterator[BadItem]:
    """A folder the walk could not list (permissions, I/O): one refusal each, named by the folder."""
    while errors:
        exc = errors.pop(0)
        yield BadItem(SourceItem(str(exc.filename)), IngestError(RejectReason.UNREADABLE, f"folder cannot be listed ({type(exc).__name__}): its files are not read"))


def _file_items(path: str, inside: list[str], follow_links: bool, max_zip_members: int) -> Iterator[SourceItem | BadItem]:
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            if not follow_links and not _within(os.path.realpath(path), inside):
                yield BadItem(SourceItem(path), IngestError(RejectReason.LINK_OUTSIDE, "symbolic link to a file outside the given sources: not followed (--follow-links allows it)"))
                return
            mode = os.stat(path).st_mode
    except FileNotFoundError:
        yield BadItem(SourceItem(path), IngestError(RejectReason.UNREADABLE, "symbolic link whose target does not exist, or a file gone since it was listed"))
        return
    except OSError as exc:
        yield BadItem(SourceItem(path), IngestError(RejectReason.UNREADABLE, f"file cannot be read ({type(exc).__name__})"))
        return
    if stat.S_ISDIR(mode):
        return  # a link to a folder: folders are never followed through links (loops)
    if not stat.S_ISREG(mode):
        yield BadItem(SourceItem(path), IngestError(RejectReason.NOT_AN_IMAGE, "not a regular file (a device, pipe or socket): not opened"))
        return
    if path.lower().endswith(".zip") or _is_zip(path):
        yield from _zip_items(path, max_zip_members)
    else:
        yield SourceItem(path)


def _within(target: str, roots: list[str]) -> bool:
    return any(target == root or target.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _is_zip(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False  # an unreadable file: reading it says so (``unreadable``)


def _zip_items(path: str, max_members: int) -> Iterator[SourceItem | BadItem]:
    """The members of one archive, or one :class:`BadItem` for the whole archive."""
    try:
        check_count(declared_members(path), max_members, entries=True)  # before listing a million entries
        infos = [info for info in open_archive(path).infolist() if not info.is_dir()]
        check_count(len(infos), max_members)  # files only; an end record may also understate its entries
    except IngestError as err:
        yield BadItem(SourceItem(path), err)
        return
    for info in sorted(infos, key=lambda i: i.filename):
        try:
            check_member(info, MAX_MEMBER_BYTES)
        except IngestError as err:
            yield BadItem(SourceItem(path, info.filename), err)
            continue
        yield SourceItem(path, info.filename)
