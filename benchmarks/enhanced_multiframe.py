"""Ingest of a large enhanced multi-frame MR: medssl vs dcm2niix, same run, one core.

    python -m benchmarks.enhanced_multiframe [--slices 40] [--volumes 128] [--runs 3] [--out benchmarks/out]

The input is built from a real Siemens XA60 enhanced EPI file of the dcm_qa corpus
(``../shared/data/dicom_qa``): its per-frame functional groups (echo, averages, frame
type, frame content, plane position and orientation, Siemens private frame items, pixel
measures, VOI LUT, pixel value transformation) are repeated for ``slices x volumes``
frames (default 40 x 128 = 5,120 frames) with each frame's position, stack position,
temporal index and acquisition time set, as a scanner writes a long fMRI run into one
file. pydicom is slow on such per-frame sequences (an earlier medssl took 178 s on one real
enhanced export where dcm2niix took 0.4 s).

Both tools convert the file from a cold output folder ``--runs`` times, pinned to CPU 0
(``taskset``); the best time counts. Start-up is measured separately (each tool on one
small file: dcm2niix's process start, Python's imports) and subtracted, so the ratio
compares conversion work. medssl's figure includes what dcm2niix does not do: header
de-identification, the manifest, sha256 and atomic writes with fsync.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from benchmarks.machine import describe
from tools.dicom_conformance import CORPUS

TEMPLATE = CORPUS / "dcm_qa_xa60" / "In" / "XA60" / "DICOM" / "24100413" / "39280000" / "75739475"


def make_enhanced(path: Path, slices: int, volumes: int, seed: int = 0) -> Path:
    """An enhanced MR file of ``slices * volumes`` 64x64 frames modelled on the XA60 template."""
    ds = pydicom.dcmread(TEMPLATE)
    template = ds.PerFrameFunctionalGroupsSequence[0]
    ipp0 = np.array([float(v) for v in template.PlanePositionSequence[0].ImagePositionPatient])
    iop = np.array([float(v) for v in template.PlaneOrientationSequence[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    frames = []
    for t in range(volumes):
        for z in range(slices):
            group = copy.deepcopy(template)
            group.PlanePositionSequence[0].ImagePositionPatient = [f"{v:.6f}" for v in ipp0 + 3.0 * z * normal]
            content = group.FrameContentSequence[0]
            content.TemporalPositionIndex = t + 1
            content.InStackPositionNumber = z + 1
            content.DimensionIndexValues = [1, t + 1, z + 1][: len(content.DimensionIndexValues)] if "DimensionIndexValues" in content else [1, t + 1, z + 1]
            seconds = 10 * 3600 + 2.0 * t + 2.0 * z / slices
            content.FrameAcquisitionDateTime = f"20240101{int(seconds // 3600):02d}{int(seconds % 3600 // 60):02d}{seconds % 60:09.6f}"
            frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.NumberOfFrames = len(frames)
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4000, size=(len(frames), ds.Rows, ds.Columns), dtype=np.uint16).tobytes()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def timed(command: list[str], out: Path, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def medssl_cmd(src: Path, out: Path, key: Path) -> list[str]:
    return ["taskset", "-c", "0", sys.executable, "-m", "medssl.cli", "ingest", str(src), "--out", str(out / "store"), "--key-file", str(key), "--workers", "1", "--no-progress"]


def dcm2niix_cmd(src: Path, out: Path) -> list[str]:
    return ["taskset", "-c", "0", "dcm2niix", "-z", "i", "-1", "-b", "n", "-o", str(out), str(src)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--volumes", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args(argv)
    n = args.slices * args.volumes
    big = args.out / "enhanced" / f"big-{n}" / "mr.dcm"
    if not big.exists():
        make_enhanced(big, args.slices, args.volumes)
    small = args.out / "enhanced" / "small" / "mr.dcm"
    if not small.exists():
        small.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(TEMPLATE, small)
    key = args.out / "enhanced" / "bench.key"
    key.write_bytes(bytes(range(32)))
    key.chmod(0o600)
    work = args.out / "enhanced" / "work"
    m_small = timed(medssl_cmd(small.parent, work / "m", key), work / "m", args.runs)
    d_small = timed(dcm2niix_cmd(small.parent, work / "d"), work / "d", args.runs)
    m_big = timed(medssl_cmd(big.parent, work / "m", key), work / "m", args.runs)
    d_big = timed(dcm2niix_cmd(big.parent, work / "d"), work / "d", args.runs)
    m_net, d_net = m_big - m_small, max(d_big - d_small, 1e-3)
    print(describe())
    print("| input | frames | medssl s | dcm2niix s | medssl frames/s | dcm2niix frames/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    print(f"| enhanced MR, {args.slices} slices x {args.volumes} volumes, 64x64 | {n} | {m_big:.2f} ({m_net:.2f} net) | {d_big:.2f} ({d_net:.2f} net) | {n / m_net:.0f} | {n / d_net:.0f} | {m_net / d_net:.2f} |")
    print(f"start-up (one 10-frame file): medssl {m_small:.2f} s, dcm2niix {d_small:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
