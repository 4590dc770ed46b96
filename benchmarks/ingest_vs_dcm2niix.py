"""Ingest speed: medssl vs dcm2niix on the same CT series, in the same run.

    python -m benchmarks.ingest_vs_dcm2niix [--slices 200] [--series 4] [--out benchmarks/out]

Input: phantom CT series of 512x512 slices (tools.phantom), written uncompressed
(explicit VR little endian) and compressed (RLE lossless, JPEG 2000 lossless). Each tool
converts each input to .nii.gz from a cold output folder, three times; the best time counts
(the page cache is warm for both, so this measures conversion, not the disk).

- one core: both pinned to CPU 0 (``taskset``); medssl ``--workers 1``; dcm2niix ``-z i``
  (its internal single-threaded gzip) at its fastest level ``-1``.
- all cores: several series in one folder; medssl ``--workers NPROC``; dcm2niix ``-z y``
  (pigz, multi-threaded) at its default level.

medssl's figure includes what dcm2niix does not do: de-identification of every header,
the manifest, sha256 of every output, and atomic writes with fsync.
Prints a Markdown table to paste into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tools.phantom import make_ct_phantom, write_ct_series

SYNTAXES = {"uncompressed": "ExplicitVRLittleEndian", "RLE": "RLELossless", "JPEG 2000": "JPEG2000Lossless"}


def make_inputs(root: Path, slices: int, series: int) -> dict[str, Path]:
    phantom = make_ct_phantom((512, 512, slices), (0.7, 0.7, 1.25), seed=0, n_lesions=4)
    inputs = {}
    for label, ts in SYNTAXES.items():
        folder = root / f"one-{label.replace(' ', '')}"
        if not folder.exists():
            write_ct_series(phantom, folder, transfer_syntax=ts, seed=1)
        inputs[f"one:{label}"] = folder
    many = root / "many-uncompressed"
    if not many.exists():
        for index in range(series):
            write_ct_series(phantom, many, series_number=index + 1, patient_id=f"BENCH{index:03d}", seed=10 + index)
    inputs["many:uncompressed"] = many
    return inputs


def best_of(runs: int, command: list[str], out: Path, env: dict | None = None) -> float:
    best = float("inf")
    for _ in range(runs):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        best = min(best, time.perf_counter() - start)
    return best


def medssl_cmd(src: Path, out: Path, key: Path, workers: int, pin: bool) -> list[str]:
    cmd = [sys.executable, "-m", "medssl.cli", "ingest", str(src), "--out", str(out / "store"), "--key-file", str(key), "--workers", str(workers), "--no-progress"]
    return (["taskset", "-c", "0"] if pin else []) + cmd


def dcm2niix_cmd(src: Path, out: Path, pin: bool) -> list[str]:
    gz = ["-z", "i", "-1"] if pin else ["-z", "y"]
    return (["taskset", "-c", "0"] if pin else []) + ["dcm2niix", *gz, "-b", "n", "-o", str(out), "-f", "%s_%p", str(src)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--series", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args(argv)
    inputs = make_inputs(args.out / "inputs", args.slices, args.series)
    key = args.out / "bench.key"
    cores = os.cpu_count() or 1
    rows = []
    for name, src in inputs.items():
        pin = name.startswith("one:")
        files = [p for p in src.iterdir() if p.is_file()]
        n_slices, n_bytes = len(files), sum(p.stat().st_size for p in files)
        t_ours = best_of(args.runs, medssl_cmd(src, args.out / "run-medssl", key, 1 if pin else cores, pin), args.out / "run-medssl")
        t_ref = best_of(args.runs, dcm2niix_cmd(src, args.out / "run-dcm2niix", pin), args.out / "run-dcm2niix")
        rows.append((name, n_slices, n_bytes, t_ours, t_ref))
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, Python {platform.python_version()}, dcm2niix {_dcm2niix_version()}")
    print("| input | slices | MB in | medssl s | medssl slices/s | medssl MB/s | dcm2niix s | dcm2niix slices/s | medssl / dcm2niix time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n, size, ours, ref in rows:
        mode, label = name.split(":")
        where = "1 core" if mode == "one" else f"{cores} cores, {args.series} series"
        print(f"| {label} ({where}) | {n} | {size / 1e6:.0f} | {ours:.2f} | {n / ours:.0f} | {size / 1e6 / ours:.0f} | {ref:.2f} | {n / ref:.0f} | {ours / ref:.2f}x |")
    return 0


def _dcm2niix_version() -> str:
    out = subprocess.run(["dcm2niix", "-v"], capture_output=True, text=True)
    for token in (out.stdout + out.stderr).split():
        if token.startswith("v1."):
            return token
    return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
