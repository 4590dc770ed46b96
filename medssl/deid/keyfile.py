"""The site key behind every pseudonym: created once, readable by its owner only.

Whoever holds the key can re-link pseudonyms to the identifiers they came from (by
recomputing them), so the key is treated like a password: 32 random bytes, file mode
0600, created atomically so two ingest workers never end up with different keys, never
logged, printed or put in an error message.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from medssl.atomic import fsync_dir
from medssl.errors import MedsslError
from medssl.types import PathLike

KEY_BYTES = 32


def load_or_create_key(path: PathLike) -> bytes:
    """Return the key stored at ``path``, creating it on first use.

    Raises ``MedsslError`` (naming the path and the reason, never the key) when the file
    can be read by group or others, is not a regular file, or does not hold 32 bytes.
    """
    path = Path(path)
    if not path.exists():
        _create(path)
    return _load(path)


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        # link() fails if another process created the key first: theirs wins, ours goes.
        # A bare os.replace() here would let a late writer swap the key under an early one.
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # filesystems without hard links: still atomic, last writer wins
            if not path.exists():
                os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _load(path: Path) -> bytes:
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise MedsslError(f"key file {path}: not a regular file")
    if os.name == "posix" and st.st_mode & 0o077:
        raise MedsslError(
            f"key file {path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others read "
            f"it; run `chmod 600 {path}`"
        )
    data = path.read_bytes()
    if len(data) != KEY_BYTES:
        raise MedsslError(f"key file {path}: holds {len(data)} bytes, expected {KEY_BYTES}")
    return data
