"""Zip archives as ingest sources: counted before they are listed, opened once per process.

Reopening an archive for each member parses its whole central directory each time, so a
zip of n members cost n² (4,000 one-byte members: 193 s). Each process keeps the few
archives it reads open instead (:func:`open_archive`), keyed by the file's identity so a
changed file is opened afresh. The member count is read from the end-of-central-directory
record before any directory entry is parsed, so an archive of a million entries is refused
in one read (:func:`declared_members`; folder entries count there, so the listing that
follows counts the files exactly).
"""

from __future__ import annotations

import lzma
import os
import zipfile
import zlib
from collections import OrderedDict

from medssl.errors import IngestError
from medssl.types import RejectReason

MAX_MEMBER_BYTES = 4 << 30  # one archived file larger than this is not a medical image slice
MAX_COMPRESSION_RATIO = 200  # DICOM compresses ~2-10x; far more is a zip bomb
MAX_ZIP_MEMBERS = 20_000  # a whole CT/MR study exported as one zip is a few thousand files
_OPEN_ARCHIVES = 4  # archives kept open per process (members of one archive come in a row)

_cache: OrderedDict[tuple, zipfile.ZipFile] = OrderedDict()


def declared_members(path: str) -> int:
    """The entry count the archive's end record declares (folders included), read without listing."""
    try:
        with open(path, "rb") as f:
            end = zipfile._EndRecData(f)  # the stdlib's own reader of the (zip64) end record
    except PermissionError as exc:
        raise IngestError(
            RejectReason.UNREADABLE, f"zip archive cannot be read ({type(exc).__name__})"
        ) from None
    except (OSError, ValueError, EOFError) as exc:
        raise IngestError(
            RejectReason.BAD_ARCHIVE, f"zip archive unreadable ({type(exc).__name__})"
        ) from None
    if not end:
        raise IngestError(
            RejectReason.BAD_ARCHIVE, "zip archive unreadable (no end of central directory)"
        )
    return int(end[zipfile._ECD_ENTRIES_TOTAL])


def check_count(count: int, limit: int, *, entries: bool = False) -> None:
    """Refuse more than ``limit`` files; ``entries``: ``count`` includes folder entries, so
    only a count far past the bound is refused before the files are counted exactly."""
    if count > (2 * limit + 1000 if entries else limit):
        what = "entries" if entries else "members"
        raise IngestError(
            RejectReason.BAD_ARCHIVE,
            f"zip archive holds {count} {what}, more than the bound of {limit} members (--max-zip-members)",
        )


def open_archive(path: str) -> zipfile.ZipFile:
    """The archive at ``path``, opened once per process while it stays the same file."""
    try:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        archive = zipfile.ZipFile(path)
    except PermissionError as exc:
        raise IngestError(
            RejectReason.UNREADABLE, f"zip archive cannot be read ({type(exc).__name__})"
        ) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise IngestError(
            RejectReason.BAD_ARCHIVE, f"zip archive unreadable ({type(exc).__name__})"
        ) from None
    _cache[key] = archive
    while len(_cache) > _OPEN_ARCHIVES:
        _cache.popitem(last=False)[1].close()
    return archive


def close_archives() -> None:
    while _cache:
        _cache.popitem()[1].close()


def read_member(path: str, member: str, limit: int) -> bytes:
    """One member's bytes; refused above ``limit`` bytes, as a bomb, or when it differs from its entry."""
    archive = open_archive(path)
    try:
        info = archive.getinfo(member)
        check_member(info, limit)
        with archive.open(info) as f:
            data = f.read(info.file_size + 1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, KeyError) as exc:
        raise IngestError(
            RejectReason.BAD_ARCHIVE, f"archive member unreadable ({type(exc).__name__})"
        ) from None
    except (zlib.error, lzma.LZMAError):  # damaged compressed bytes: not an OSError
        raise IngestError(RejectReason.BAD_ARCHIVE, "archive member's compressed data do not decompress") from None
    except NotImplementedError:  # a compression method zipfile does not know (a damaged header)
        raise IngestError(RejectReason.BAD_ARCHIVE, "archive member compressed by an unsupported method") from None
    except RuntimeError as exc:  # encrypted members
        raise IngestError(RejectReason.BAD_ARCHIVE, "archive member is encrypted") from exc
    if len(data) != info.file_size:
        raise IngestError(
            RejectReason.BAD_ARCHIVE, "archive member size differs from its directory entry"
        )
    return data


def check_member(info: zipfile.ZipInfo, limit: int) -> None:
    name = info.filename.replace("\\", "/")
    if (
        name.startswith("/")
        or ".." in name.split("/")
        or "\x00" in name
        or (len(name) > 1 and name[1] == ":")
    ):
        raise IngestError(
            RejectReason.BAD_ARCHIVE, "archive member with an unsafe path (absolute or '..')"
        )
    if info.file_size > limit:
        raise IngestError(
            RejectReason.TOO_LARGE, f"archive member of {info.file_size} bytes exceeds {limit}"
        )
    if (
        info.compress_size
        and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO
        and info.file_size > (16 << 20)
    ):
        raise IngestError(
            RejectReason.BAD_ARCHIVE,
            f"archive member expands {info.file_size // info.compress_size}x: refused as a zip bomb",
        )
