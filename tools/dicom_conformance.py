"""Conformance of ``medssl ingest`` on real scanner DICOM: the dcm_qa corpus vs dcm2niix.

The corpus (``../shared/data/dicom_qa``, its README and MANIFEST.tsv) holds 49 series from
Siemens, GE and Philips scanners with dcm2niix's reference NIfTIs. Each series folder is
ingested with default settings into its own store, exactly as a user would; every 3D frame
of every reference (a 4D reference gives one per volume, an RGB one per channel) must then
be matched by a 3D frame of a volume medssl wrote:

- same shape after ``as_closest_canonical`` on both;
- same values: ``max|ours - ref| <= 1e-3 * max(1, max|ref|)`` on scaled values;
- voxel centres: the 8 corner voxels' world positions within 0.1 mm.

Where dcm2niix's affine is itself off (it takes the slice step from the first slices), the
headers are the truth: every slice origin (ImagePositionPatient) must lie on medssl's grid
within 0.1 mm; the outcome is then ``match (headers)``.

    python -m tools.dicom_conformance                 # run, rewrite docs/conformance.md
    python -m tools.dicom_conformance --check         # exit 1 unless every series matches
    python -m tools.dicom_conformance --only dcm_qa_ge --no-doc

Tests (tests/io/test_conformance_real.py) call :func:`run_series` per series.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from medssl.store.ingest import IngestOptions, ingest
from medssl.store.manifest import Manifest

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom_qa"
DOC = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"
KEY = b"medssl-conformance-key-0123456789"
TOL_MM = 0.1
DICOM_KINDS = {"dicom_files", "dicom_zip", "dicomweb"}


@dataclass(frozen=True)
class CorpusSeries:
    """One row of the corpus MANIFEST.tsv."""

    repo: str
    folder: str
    vendor: str
    modality: str
    n_files: int
    references: tuple[str, ...]
    transfer_syntax: str
    description: str

    @property
    def name(self) -> str:
        return f"{self.repo}/{self.folder}"

    @property
    def path(self) -> Path:
        return CORPUS / self.repo / self.folder

    def reference_paths(self) -> list[Path]:
        return [CORPUS / self.repo / ref for ref in self.references]


@dataclass
class Frame:
    """One 3D frame in RAS+ voxel order with its world affine."""

    array: np.ndarray
    affine: np.ndarray
    label: str


@dataclass
class FrameResult:
    reference: str
    matched: bool
    by_headers: bool = False
    corner_mm: float | None = None  # max corner distance to the best same-shape candidate
    why: str = ""


@dataclass
class SeriesResult:
    series: CorpusSeries
    frames: list[FrameResult] = field(default_factory=list)
    volumes: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (code, message)
    slices: int = 0
    seconds: float = 0.0
    dcm2niix_seconds: float | None = None
    store: Path | None = None  # where the series was ingested (kept while the caller's workdir lives)

    @property
    def outcome(self) -> str:
        if self.frames and all(f.matched for f in self.frames):
            return "match (headers)" if any(f.by_headers for f in self.frames) else "match"
        if not self.volumes and self.rejected:
            return f"refused ({self.rejected[0][0]})"
        return "mismatch"

    @property
    def max_corner_mm(self) -> float | None:
        values = [f.corner_mm for f in self.frames if f.corner_mm is not None]
        return max(values) if values else None


def corpus_available() -> bool:
    return (CORPUS / "MANIFEST.tsv").is_file()


def read_corpus() -> list[CorpusSeries]:
    with open(CORPUS / "MANIFEST.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [
        CorpusSeries(
            repo=r["repo"],
            folder=r["series_folder"],
            vendor=r["vendor"],
            modality=r["modality"],
            n_files=int(r["n_files"]),
            references=tuple(s for s in r["reference_nifti"].split(";") if s),
            transfer_syntax=r["transfer_syntax"],
            description=r["description"],
        )
        for r in rows
    ]


def frames_of(img: nib.Nifti1Image, label: str) -> list[Frame]:
    """3D frames of a NIfTI in RAS+ order: a 4D image per volume, an RGB image per channel."""
    img = nib.as_closest_canonical(img)
    data = np.asanyarray(img.dataobj)
    if data.dtype.names:  # RGB24: a structured (R, G, B) voxel
        channels = [np.asarray(data[name], dtype=np.float64) for name in data.dtype.names]
    elif data.ndim == 2:
        channels = [data[:, :, None].astype(np.float64)]
    elif data.ndim == 3:
        channels = [data.astype(np.float64)]
    else:
        flat = data.reshape(data.shape[:3] + (-1,))
        channels = [flat[..., t].astype(np.float64) for t in range(flat.shape[3])]
    return [Frame(c, img.affine, f"{label}[{t}]") for t, c in enumerate(channels)]


def _corners(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    idx = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    return (affine @ idx.T).T[:, :3]


def corner_distance(a: Frame, b: Frame) -> float:
    return float(np.linalg.norm(_corners(a.array.shape, a.affine) - _corners(b.array.shape, b.affine), axis=1).max())


def values_equal(ours: np.ndarray, ref: np.ndarray) -> bool:
    scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
    return float(np.abs(ours - ref).max()) <= 1e-3 * scale


def origins_on_grid(frame: Frame, origins_ras: np.ndarray) -> bool:
    """Every slice origin (RAS mm) lies on the frame's voxel grid, within TOL_MM."""
    if not len(origins_ras):
        return False
    inv = np.linalg.inv(frame.affine)
    idx = (inv[:3, :3] @ origins_ras.T).T + inv[:3, 3]
    nearest = np.clip(np.rint(idx), 0, np.array(frame.array.shape[:3]) - 1)
    world = (frame.affine[:3, :3] @ nearest.T).T + frame.affine[:3, 3]
    return bool(np.linalg.norm(world - origins_ras, axis=1).max() <= TOL_MM)


def slice_origins(folder: Path) -> np.ndarray:
    """ImagePositionPatient of every single-frame image in ``folder``, in RAS mm."""
    import pydicom

    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["ImagePositionPatient", "NumberOfFrames"])
        except Exception:  # noqa: BLE001 - stray non-DICOM files in the corpus folders
            continue
        if "ImagePositionPatient" in ds and int(ds.get("NumberOfFrames", 1) or 1) == 1:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            out.append((-x, -y, z))
    return np.array(out)


def match_frames(refs: list[Frame], ours: list[Frame], origins: np.ndarray | None) -> list[FrameResult]:
    results = []
    for ref in refs:
        same_shape = [o for o in ours if o.array.shape == ref.array.shape]
        if not same_shape:
            shapes = sorted({o.array.shape for o in ours})
            results.append(FrameResult(ref.label, False, why=f"no volume of shape {ref.array.shape} (have {shapes[:4]})"))
            continue
        same_values = [o for o in same_shape if values_equal(o.array, ref.array)]
        pool = same_values or same_shape
        best = min(pool, key=lambda o: corner_distance(o, ref))
        dist = corner_distance(best, ref)
        if not same_values:
            err = float(np.abs(best.array - ref.array).max())
            results.append(FrameResult(ref.label, False, corner_mm=dist, why=f"values differ (max {err:.4g})"))
        elif dist <= TOL_MM:
            results.append(FrameResult(ref.label, True, corner_mm=dist))
        elif origins is not None and origins_on_grid(best, origins):
            results.append(FrameResult(ref.label, True, by_headers=True, corner_mm=dist))
        else:
            results.append(FrameResult(ref.label, False, corner_mm=dist, why=f"corners {dist:.3f} mm from dcm2niix's"))
    return results


def stored_frames(store: Path) -> tuple[list[Frame], int, list[tuple[str, str]], int]:
    """Frames of every DICOM-derived volume in ``store``, the volume count, refusals, slices."""
    frames, slices = [], 0
    with Manifest(store / "manifest.sqlite") as manifest:
        rows = [r for r in manifest.volumes() if r.source_kind in DICOM_KINDS]
        rejected = [(r["code"], r["message"]) for r in manifest.rejected()]
    for row in rows:
        img = nib.load(store / row.path)
        frames += frames_of(img, row.volume_id[:8])
        slices += int(np.prod(img.shape[2:])) if img.ndim >= 3 else 1
    return frames, len(rows), rejected, slices


def run_series(series: CorpusSeries, workdir: Path, *, with_dcm2niix: bool = False) -> SeriesResult:
    """Ingest one corpus series with default settings and match it against its references."""
    store = workdir / "store"
    shutil.rmtree(store, ignore_errors=True)
    start = time.perf_counter()
    ingest([series.path], store, KEY, IngestOptions(workers=1, progress=False))
    seconds = time.perf_counter() - start
    ours, n_volumes, rejected, slices = stored_frames(store)
    refs = [f for path in series.reference_paths() for f in frames_of(nib.load(path), path.name)]
    origins = slice_origins(series.path) if series.path.is_dir() else slice_origins_file(series.path)
    result = SeriesResult(series, match_frames(refs, ours, origins), n_volumes, rejected, slices, seconds, store=store)
    if with_dcm2niix and shutil.which("dcm2niix"):
        result.dcm2niix_seconds = time_dcm2niix(series.path, workdir / "dcm2niix")
    return result


def slice_origins_file(path: Path) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(path, Path(tmp) / path.name)
        return slice_origins(Path(tmp))


def time_dcm2niix(src: Path, out: Path) -> float:
    """Seconds dcm2niix takes on ``src`` (internal gzip at level 1, as medssl writes; no
    sidecar), best of two, less its start-up (a run on an empty folder)."""

    def best(folder: Path) -> float:
        fastest = float("inf")
        for _ in range(2):
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            start = time.perf_counter()
            subprocess.run(["dcm2niix", "-z", "i", "-1", "-b", "n", "-o", str(out), str(folder)], capture_output=True, check=False)
            fastest = min(fastest, time.perf_counter() - start)
        return fastest

    empty = out.parent / "empty"
    empty.mkdir(parents=True, exist_ok=True)
    return max(best(src) - best(empty), 1e-3)


def render(results: list[SeriesResult]) -> str:
    """docs/conformance.md from a run."""
    by_vendor: dict[str, list[SeriesResult]] = {}
    for r in results:
        by_vendor.setdefault(r.series.vendor, []).append(r)
    ok = sum(r.outcome.startswith("match") for r in results)
    lines = [
        "# DICOM conformance on real scanner files",
        "",
        "Generated by `python -m tools.dicom_conformance` from a run of `medssl ingest` (default settings)",
        "over every series of the dcm_qa corpus (`../shared/data/dicom_qa`, BSD-2-Clause, Chris Rorden",
        "and co-authors; see NOTICE). Do not edit by hand.",
        "",
        "A series **matches** when every 3D frame of every dcm2niix reference is matched by a frame",
        "medssl wrote: same shape (RAS+ order), same scaled values (within 1e-3 of the range), the",
        "8 corner voxel centres within 0.1 mm. **match (headers)**: dcm2niix's own affine is off",
        "(it takes the slice step from the first slices) and every slice origin lies on medssl's grid",
        "within 0.1 mm of its ImagePositionPatient. Distances are to dcm2niix's corners.",
        "",
        f"**{ok} of {len(results)} series match.**",
        "",
        "| vendor | series | matched |",
        "|---|---|---|",
    ]
    for vendor, rs in sorted(by_vendor.items()):
        n = sum(r.outcome.startswith("match") for r in rs)
        lines.append(f"| {vendor} | {len(rs)} | {n} ({100 * n / len(rs):.0f} %) |")
    lines += ["", "| series | vendor | syntax | outcome | frames | max corner distance (mm) | note |", "|---|---|---|---|---|---|---|"]
    for r in results:
        dist = r.max_corner_mm
        missing = [f for f in r.frames if not f.matched]
        note = missing[0].why if missing else ("; ".join(f"{c}: {m}" for c, m in r.rejected[:1]) if not r.frames else "")
        lines.append(
            f"| `{r.series.name}` | {r.series.vendor} | {r.series.transfer_syntax} | {r.outcome} | "
            f"{sum(f.matched for f in r.frames)}/{len(r.frames)} | {'' if dist is None else f'{dist:.4f}'} | {note} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run series whose name contains this text")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/conformance.md")
    parser.add_argument("--check", action="store_true", help="exit 1 unless every series matches")
    parser.add_argument("--dcm2niix", action="store_true", help="also time dcm2niix on each series (slices/s)")
    parser.add_argument("--json", type=Path, help="write per-series results here")
    args = parser.parse_args(argv)
    if not corpus_available():
        print(f"corpus not found at {CORPUS}")
        return 2
    series = [s for s in read_corpus() if not args.only or args.only in s.name]
    results = []
    with tempfile.TemporaryDirectory(prefix="medssl-conformance-") as tmp:
        for index, s in enumerate(series):
            r = run_series(s, Path(tmp) / str(index), with_dcm2niix=args.dcm2niix)
            results.append(r)
            extra = f" dcm2niix {r.dcm2niix_seconds:.2f}s" if r.dcm2niix_seconds is not None else ""
            print(f"{r.outcome:18s} {s.name}  {r.seconds:.2f}s{extra}  {next((f.why for f in r.frames if not f.matched), '')}", flush=True)
    if not args.no_doc and not args.only:
        DOC.write_text(render(results))
    if args.json:
        args.json.write_text(json.dumps([{"series": r.series.name, "vendor": r.series.vendor, "outcome": r.outcome, "slices": r.slices,
                                          "seconds": r.seconds, "dcm2niix_seconds": r.dcm2niix_seconds, "machine": platform.machine()} for r in results], indent=1))
    ok = sum(r.outcome.startswith("match") for r in results)
    print(f"{ok} of {len(results)} series match")
    return 0 if (ok == len(results) or not args.check) else 1


if __name__ == "__main__":
    raise SystemExit(main())
