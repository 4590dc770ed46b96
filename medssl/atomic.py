"""Atomic file writes: no final path ever holds a partial file.

Write to a temporary name in the same folder, fsync, ``os.replace`` onto the final name,
fsync the folder. A process killed at any instant leaves either the old state or the new
one, plus perhaps a stale temporary that :func:`remove_stale_temporaries` clears.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TMP_MARK = ".medssl-tmp"


def temporary_sibling(path: Path) -> Path:
    """A unique hidden temporary name next to ``path`` (keeps its suffixes for tools that sniff them)."""
    return path.with_name(f".{secrets.token_hex(6)}{TMP_MARK}.{path.name}")


def fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX: a directory is fsynced through a descriptor)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform; the file itself is already synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """``with atomic_writer(p) as f: f.write(...)``: ``p`` appears whole when the block ends,
    or not at all if it raises (the temporary is removed, even on KeyboardInterrupt)."""
    path = Path(path)
    tmp = temporary_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see all of it or none of it."""
    with atomic_writer(path, mode) as stream:
        stream.write(data)


def atomic_publish_dir(staging: Path, final: Path) -> bool:
    """Move a fully written folder into place; False (and staging removed) if ``final`` exists."""
    try:
        os.rename(staging, final)  # atomic; fails if final is a non-empty folder
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        return False
    fsync_dir(final.parent)
    return True


def remove_stale_temporaries(directory: Path) -> int:
    """Delete temporaries an interrupted run left behind; returns how many."""
    count = 0
    if not directory.is_dir():
        return 0
    for entry in directory.iterdir():
        if TMP_MARK in entry.name:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            count += 1
    return count
