"""``STORE/quarantine/<ref>/``: what ingest refused, kept for a person to review.

``reason.json`` holds the reason code and message. DICOM files that parse are kept as
de-identified copies (header through the same profile as everything else; pixels as
they were, which is why the folder is private, 0700: a burned-in annotation is still in
the pixels). Files that do not parse are not copied - their raw bytes cannot be
de-identified - and the source itself is never touched, so nothing is lost:
``medssl ingest --locate REF SOURCE`` finds the original again with the project key.

The folder is published with one atomic rename, so it is either complete or absent.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path

from medssl.atomic import TMP_MARK, atomic_publish_dir, fsync_dir
from medssl.deid import DeidOptions, Pseudonymizer, deidentify
from medssl.errors import IngestError
from medssl.io.dicom_scan import read_dataset
from medssl.io.sources import SourceItem

QUARANTINE = "quarantine"


def quarantine(
    store: Path,
    ref: str,
    err: IngestError,
    *,
    items: list[SourceItem],
    read_bytes: Callable[[SourceItem], bytes],
    pseudo: Pseudonymizer,
    options: DeidOptions,
) -> str:
    """Publish ``quarantine/<ref>`` once; returns its path relative to ``store``."""
    root = store / QUARANTINE
    root.mkdir(mode=0o700, exist_ok=True)
    rel = f"{QUARANTINE}/{ref}"
    final = store / rel
    if final.exists():
        return rel
    staging = root / f".{ref}{TMP_MARK}-{os.getpid()}"
    staging.mkdir(mode=0o700, parents=True, exist_ok=True)
    kept, unreadable = 0, 0
    for item in items:
        try:
            ds = read_dataset(read_bytes(item), stop_before_pixels=False)
            deidentify(ds, pseudo, options)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=False)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # noqa: BLE001 - a copy we cannot make (even a decoder panic) is simply not kept
            unreadable += 1
            continue
        (staging / "files").mkdir(mode=0o700, exist_ok=True)
        _write(staging / "files" / f"{kept:05d}.dcm", buf.getvalue())
        kept += 1
    reason = {"code": str(err.code), "message": err.message, "files_kept": kept, "files_not_copied": unreadable}
    _write(staging / "reason.json", json.dumps(reason, indent=1).encode())
    fsync_dir(staging)
    atomic_publish_dir(staging, final)
    return rel


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
