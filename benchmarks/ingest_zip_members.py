"""Ingest time against the member count of one zip (issue 15, item 5).

    python -m benchmarks.ingest_zip_members [--members 1000 4000] [--workers 1] [--max-zip-members N]

Each input is one zip of N one-byte members (none is an image, so every member is read,
sniffed and refused). Prints, per N, the zip's size, the ingest wall time, the rejected rows
and the folders made under quarantine/, as a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from medssl.store.ingest import IngestOptions, ingest
from tests.store import store_view as sv

KEY = bytes(range(32))


def make_zip(path: Path, members: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(members):
            zf.writestr(f"m/{i:06d}.dcm", b"x")
    return path


def measure(members: int, workers: int, max_zip_members: int | None) -> dict:
    root = Path(tempfile.mkdtemp(prefix="medssl-zipbench-"))
    try:
        src = root / "src"
        src.mkdir()
        archive = make_zip(src / "export.zip", members)
        kwargs = {"workers": workers, "progress": False}
        if (
            max_zip_members is not None
            and "max_zip_members" in inspect.signature(IngestOptions).parameters
        ):
            kwargs["max_zip_members"] = max_zip_members
        start = time.perf_counter()
        ingest([str(src)], root / "store", KEY, IngestOptions(**kwargs))
        seconds = time.perf_counter() - start
        rows = sv.rejected(root / "store")
        folders = len(os.listdir(root / "store" / "quarantine"))
        return {
            "members": members,
            "kb": archive.stat().st_size // 1024,
            "s": seconds,
            "rows": len(rows),
            "folders": folders,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-zip-members", type=int, default=None)
    args = parser.parse_args()
    logging.getLogger("medssl").setLevel(logging.ERROR)  # one warning per refused member
    print("| members | zip | workers | ingest | rejected rows | quarantine folders |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.members:
        r = measure(n, args.workers, args.max_zip_members)
        print(
            f"| {r['members']:,} | {r['kb']} KB | {args.workers} | {r['s']:.1f} s | {r['rows']:,} | {r['folders']:,} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
