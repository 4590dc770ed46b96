"""Pretraining data pipeline: crops/s of medssl vs a MONAI pipeline doing the same work, same run.

    python -m benchmarks.data_pipeline [--volumes 12] [--batches 30] [--workers 2] [--out benchmarks/out/data-pipeline]

Input: phantom CT volumes (tools.phantom) of three different spacings, written as NIfTI
and ingested into a store (``medssl ingest``), so both pipelines resample and normalise.

- medssl: ``fingerprint → make_plan(crop 96³) → build_cache`` (resample + z-score once into
  memory-mapped .npy, ``--workers`` processes), then :class:`PretrainDataModule`
  (``--workers`` loader processes reading crops from the maps; batched augmentation in the
  loader workers — what ``augment_on="auto"`` does without CUDA — or in the main process
  after the batch arrives — what runs on the GPU when one is present).
- MONAI: ``LoadImaged → EnsureChannelFirstd → Orientationd(RAS) → Spacingd →
  NormalizeIntensityd`` held by ``CacheDataset`` (built with ``--workers`` threads), then per
  sample in ``--workers`` loader processes: ``RandSpatialCropSamplesd`` and the same
  augmentations (flips, 90° rotations, affine rotation + scaling, intensity scale and shift,
  gamma, Gaussian smoothing, Gaussian noise, with the same probabilities and ranges).

Both deliver batches of ``--batch`` volumes × ``--crops-per-volume`` augmented 96³ crops
to the main process; after 3 warm-up batches each, they take turns for ``--rounds`` rounds
of ``--batches`` batches and each one's best round counts (fair on a shared machine).
Also measured: crop reads from a float16 vs float32 cache (the plan's ``cache_dtype``).
Prints a Markdown table to paste into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.machine import describe

CROP = (96, 96, 96)
SPACINGS = [(0.9, 0.9, 2.0), (1.1, 1.1, 1.5), (1.0, 1.0, 2.5)]


def make_store(out: Path, n: int, shape: tuple[int, int, int], workers: int) -> Path:
    from medssl.deid import load_or_create_key
    from medssl.store.ingest import IngestOptions, ingest
    from tools.phantom import make_ct_phantom, write_nifti

    store = out / "store"
    if (store / "manifest.sqlite").is_file():
        return store
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_nifti(make_ct_phantom(shape, SPACINGS[i % len(SPACINGS)], seed=100 + i), inputs / f"ct{i:03d}.nii.gz")
    key = out / "bench.key"
    ingest([inputs], store, load_or_create_key(key), IngestOptions(workers=workers, progress=False))
    return store


def machine() -> str:
    return describe()


def time_batches(it, n: int, after=lambda b: b) -> float:
    """Crops/s over ``n`` batches drawn from the running iterator ``it``."""
    crops, start = 0, time.perf_counter()
    for _ in range(n):
        batch = after(next(it))
        crops += batch["image"].shape[0]
    return crops / (time.perf_counter() - start)


def forever(loader):
    while True:
        yield from loader


def setup_medssl(store: Path, args) -> dict:
    from medssl.data.pretrain import PretrainDataModule
    from medssl.preprocess.volume_cache import build_cache
    from medssl.store.fingerprint import fingerprint
    from medssl.store.plan import make_plan

    shutil.rmtree(store / "cache", ignore_errors=True)
    (store / "plan.json").unlink(missing_ok=True)
    start = time.perf_counter()
    plan = make_plan(fingerprint(store), crop_size=CROP)
    plan.save(store)
    plan_s = time.perf_counter() - start
    start = time.perf_counter()
    index = build_cache(store, plan, workers=args.workers, progress=False)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    build_cache(store, plan, workers=args.workers, progress=False)
    rebuild_s = time.perf_counter() - start
    size = sum(f.stat().st_size for f in index.root.glob("*.npy"))
    runs = {}
    for mode in ("loader", "device"):
        dm = PretrainDataModule(str(store), crop_size=CROP, crops_per_volume=args.crops_per_volume, batch_size=args.batch, num_workers=args.workers, val_fraction=0.0, views=0, samples_per_epoch=10**6, augment_on=mode, prefetch_factor=2, progress=False)
        dm.setup()
        runs[mode] = (forever(dm.train_dataloader()), dm.augment_batch)
    return {"plan_s": plan_s, "build_s": build_s, "rebuild_s": rebuild_s, "cache_mb": size / 2**20, "plan": plan, "runs": runs}


def measure_dtypes(store: Path, plan) -> dict:
    """Crops/s reading 96³ crops (no augmentation, one process, warm page cache) from each cache dtype."""
    import dataclasses

    from medssl.data.crops import CropDataset
    from medssl.preprocess.volume_cache import build_cache

    out = {}
    for dtype in ("float16", "float32"):
        p = dataclasses.replace(plan, cache_dtype=dtype)
        index = build_cache(store, p, workers=1, progress=False)
        ds = CropDataset(index, range(len(index.volumes)), CROP, crops_per_volume=4, length=10**6)
        for i in range(len(index.volumes)):
            ds[i]  # warm the page cache
        best = 0.0
        for _ in range(3):
            start = time.perf_counter()
            crops = sum(ds[i]["image"].shape[0] for i in range(40))
            best = max(best, crops / (time.perf_counter() - start))
        out[dtype] = (best, sum(f.stat().st_size for f in index.root.glob("*.npy")) / 2**20)
    return out


def setup_monai(store: Path, plan, args) -> dict:
    from monai import transforms as mt
    from monai.data import CacheDataset, DataLoader, list_data_collate

    from medssl.store.manifest import Manifest

    with Manifest(store / "manifest.sqlite") as m:
        files = [{"image": str(store / r["path"])} for r in m.volumes() if plan.selects(r)]
    k = "image"
    deterministic = [
        mt.LoadImaged(k, image_only=True),
        mt.EnsureChannelFirstd(k),
        mt.Orientationd(k, axcodes="RAS", labels=None),
        mt.Spacingd(k, pixdim=plan.target_spacing, mode="bilinear"),
        mt.NormalizeIntensityd(k),
        mt.EnsureTyped(k, dtype=torch.float32, track_meta=False),
    ]
    random = [
        mt.RandSpatialCropSamplesd(k, roi_size=CROP, num_samples=args.crops_per_volume, random_size=False),
        mt.SpatialPadd(k, spatial_size=CROP),
        mt.RandFlipd(k, prob=0.5, spatial_axis=0),
        mt.RandFlipd(k, prob=0.5, spatial_axis=1),
        mt.RandFlipd(k, prob=0.5, spatial_axis=2),
        mt.RandRotate90d(k, prob=0.5, spatial_axes=(0, 1)),
        mt.RandAffined(k, prob=0.3, rotate_range=(np.radians(15),) * 3, scale_range=(0.15,) * 3, mode="bilinear", padding_mode="border"),
        mt.RandScaleIntensityd(k, prob=0.5, factors=0.1),
        mt.RandShiftIntensityd(k, prob=0.5, offsets=0.1),
        mt.RandAdjustContrastd(k, prob=0.3, gamma=(0.7, 1.5)),
        mt.RandGaussianSmoothd(k, prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
        mt.RandGaussianNoised(k, prob=0.2, std=0.1),
    ]
    start = time.perf_counter()
    ds = CacheDataset(files, transform=mt.Compose(deterministic + random), cache_rate=1.0, num_workers=args.workers, progress=False)
    build_s = time.perf_counter() - start
    loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers, collate_fn=list_data_collate, persistent_workers=True, prefetch_factor=2)
    return {"build_s": build_s, "runs": {"monai": (forever(loader), lambda b: b)}}


def measure(runs: dict, args) -> dict:
    """Round-robin rounds of ``--batches`` batches per pipeline; the best round counts (the
    machine may be shared, and interleaving gives every pipeline the same chances)."""
    for it, after in runs.values():
        for _ in range(3):
            after(next(it))  # workers started, first batches out of the way
    best = dict.fromkeys(runs, 0.0)
    for _ in range(args.rounds):
        for name, (it, after) in runs.items():
            best[name] = max(best[name], time_batches(it, args.batches, after))
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", type=int, default=12)
    p.add_argument("--shape", type=int, nargs=3, default=(256, 256, 128))
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--batch", type=int, default=2, help="volumes per batch")
    p.add_argument("--crops-per-volume", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/data-pipeline"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # like each loader worker; 2 threads on 2 busy cores oversubscribe badly
    store = make_store(args.out, args.volumes, tuple(args.shape), args.workers)
    load_before = os.getloadavg()[0]
    ours = setup_medssl(store, args)
    read = measure_dtypes(store, ours["plan"])
    theirs = setup_monai(store, ours["plan"], args)
    rates = measure({"monai": theirs["runs"]["monai"], **ours["runs"]}, args)
    load = os.getloadavg()[0]
    crops_per_batch = args.batch * args.crops_per_volume
    command = "python -m benchmarks.data_pipeline " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\n### Pretraining data pipeline ({args.volumes} CT volumes {tuple(args.shape)}, 3 spacings → {ours['plan'].target_spacing} mm; {crops_per_batch} augmented 96³ crops per batch; {args.workers} CPU workers)\n")
    print(f"machine: {machine()}; monai {__import__('monai').__version__}  \ncommand: `{command}`\n")
    print("| pipeline | preprocessing once (s) | crops/s | vs MONAI |")
    print("|---|---:|---:|---:|")
    m = rates["monai"]
    print(f"| MONAI CacheDataset + RandSpatialCropSamplesd + per-sample augmentation in workers | {theirs['build_s']:.1f} (every run, in RAM) | {m:.1f} | 1.00x |")
    print(f"| medssl cache (mmap .npy) + batched augmentation in loader workers (auto on CPU) | {ours['plan_s']:.1f} plan + {ours['build_s']:.1f} cache (once, on disk) | {rates['loader']:.1f} | {rates['loader'] / m:.2f}x |")
    print(f"| medssl cache + batched augmentation in the main process, 1 thread (device mode on CPU) | (same cache) | {rates['device']:.1f} | {rates['device'] / m:.2f}x |")
    print(f"\nbest of {args.rounds} interleaved rounds of {args.batches} batches; 1-min load average {load_before:.1f} before, {load:.1f} after.  ")
    print(f"medssl cache: {ours['cache_mb']:.0f} MB ({ours['plan'].cache_dtype}); second build_cache {ours['rebuild_s'] * 1000:.0f} ms (nothing to do).  ")
    print("crop reads without augmentation (one process, warm page cache): " + "; ".join(f"{d}: {r:.0f} crops/s, {mb:.0f} MB on disk" for d, (r, mb) in read.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
