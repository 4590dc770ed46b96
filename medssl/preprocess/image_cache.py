"""The 2D image cache: each 2D store image (radiograph, ultrasound frame) preprocessed once.

Layout mirrors :mod:`medssl.data.cache`: ``STORE/cache2d/<plan_hash>/<volume_id>.npy``
(``[X, Y]`` in the plan's ``cache_dtype``, resampled to the plan's in-plane spacing
``target_spacing[:2]``, intensity-normalised as the plan says for the image's modality),
``<volume_id>.json`` beside it (written last: marks the image done) and ``index.json``.
Memory-mapped on read; every file written atomically; a killed build resumes (done images
are skipped); the build holds the cache folder's lock. An image whose manifest shape holds
more than ``max_pixels`` pixels (a header bomb, a stitched panorama) is refused before any
byte is read and listed under ``failed`` with its reason logged.

A store without 3D volumes has no plan to make from its fingerprint;
:func:`plan_for_images` makes one from the 2D images' spacings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medssl.atomic import atomic_write_bytes, remove_stale_temporaries
from medssl.data.cache import (
    INDEX_FILE,
    distributed_rank,
    exclusive_lock,
    index_covers,
    read_index_json,
    run_volume_jobs,
    write_array,
)
from medssl.errors import MedsslError
from medssl.io.nifti import read_nifti
from medssl.store.manifest import Manifest
from medssl.store.plan import VOXEL_BUDGET_2D, Plan, fit_crop_size, modality_key
from medssl.store.volume_row import VolumeRow
from medssl.transforms.intensity import NormaliseIntensity
from medssl.transforms.spatial import resample_to_spacing

log = logging.getLogger("medssl.cache2d")
INDEX_VERSION = 1
MAX_PIXELS = 1 << 26  # 64 Mpx: larger than any real radiograph


@dataclass(frozen=True)
class CachedImage:
    """One cached 2D image: ``file`` relative to the cache folder, ``shape`` ``[X, Y]`` at ``spacing``."""

    volume_id: str
    file: str
    shape: tuple[int, int]
    spacing: tuple[float, float]
    modality: str
    patient: str | None
    study: str | None
    pad_value: float
    sha256: str

    @classmethod
    def from_dict(cls, data: dict) -> CachedImage:
        return cls(
            **{
                **data,
                "shape": tuple(int(s) for s in data["shape"]),
                "spacing": tuple(float(s) for s in data["spacing"]),
            }
        )


@dataclass(frozen=True)
class ImageIndex:
    """``index.json`` read back (same contract as :class:`~medssl.data.cache.CacheIndex`)."""

    root: Path
    plan_hash: str
    images: tuple[CachedImage, ...]
    failed: tuple[str, ...] = ()

    def open(self, image: CachedImage) -> np.ndarray:
        """The image as a read-only memory map ``[X, Y]``."""
        return np.load(self.root / image.file, mmap_mode="r")

    def covers(self, wanted: dict[str, str]) -> bool:
        return index_covers(self.images, self.failed, wanted)

    @classmethod
    def read(cls, root: Path) -> ImageIndex | None:
        data = read_index_json(root, INDEX_VERSION)
        if data is None:
            return None
        images = tuple(CachedImage.from_dict(v) for v in data["images"])
        return cls(Path(root), data["plan_hash"], images, tuple(data.get("failed", ())))


def image_cache_dir(store: str | Path, plan: Plan) -> Path:
    return Path(store) / "cache2d" / plan.hash


def planned_images(store: str | Path) -> list[VolumeRow]:
    """Manifest rows of 2D images, in volume_id order."""
    with Manifest(Path(store) / "manifest.sqlite") as manifest:
        return [row for row in manifest.volumes() if row.ndim == 2]


def plan_for_images(store: str | Path, crop_size_2d: tuple[int, int] | None = None) -> Plan:
    """A plan for a store of 2D images only: median pixel spacing, per-image z-score."""
    rows = planned_images(store)
    if not rows:
        raise ValueError(f"store {store}: no 2D image to plan from")
    spacing = np.median([r.spacing[:2] for r in rows], axis=0)
    shape = np.median([r.shape[:2] for r in rows], axis=0) * 1.0
    crop = tuple(crop_size_2d) if crop_size_2d else fit_crop_size(list(shape), VOXEL_BUDGET_2D)
    return Plan(
        target_spacing=(round(float(spacing[0]), 6), round(float(spacing[1]), 6), 1.0),
        crop_size=(*crop, 32),
        crop_size_2d=crop,
    )


def preprocess_image(
    array: np.ndarray, spacing: tuple[float, ...], modality: str | None, plan: Plan
) -> tuple[np.ndarray, tuple[float, ...]]:
    """A store image ``[X, Y]`` -> normalised, resampled to ``target_spacing[:2]`` (plan dtype)."""
    if array.ndim != 2 or len(spacing) != 2:
        raise ValueError(
            f"a 2D image [X, Y] with 2 spacings, got shape {array.shape} and spacing {tuple(spacing)}"
        )
    norm = NormaliseIntensity(**dataclasses.asdict(plan.norm_for(modality)))
    x = norm(torch.from_numpy(np.asarray(array, dtype=np.float32))[None])
    x, reached = resample_to_spacing(x, spacing, plan.target_spacing[:2], "linear")
    return x[0].numpy().astype(plan.cache_dtype), reached


# worker side ------------------------------------------------------------------------------
_CTX: dict = {}


def init_image_worker(store: str, root: str, plan_json: str, max_pixels: int) -> None:
    _CTX.update(
        store=Path(store), root=Path(root), plan=Plan.from_json(plan_json), max_pixels=max_pixels
    )


def cache_image(row: VolumeRow) -> dict:
    """Cache one 2D manifest row; returns its :class:`CachedImage` fields or ``{"volume_id", "error"}``."""
    store, root, plan, max_pixels = _CTX["store"], _CTX["root"], _CTX["plan"], _CTX["max_pixels"]
    volume_id = row.volume_id
    try:
        shape = list(row.shape)
        pixels = math.prod(shape)
        if len(shape) != 2 or pixels > max_pixels:
            raise ValueError(
                f"image shape {shape} ({pixels} pixels): expected 2 axes and at most {max_pixels} pixels"
            )
        image = read_nifti((store / row.path).read_bytes(), max_bytes=max_pixels * 8)
        array = image.array
        if array.ndim == 3 and array.shape[2] == 1:  # NIfTI keeps a 2D image as [X, Y, 1]
            array = array[..., 0]
        if array.ndim != 2:
            raise ValueError(f"manifest says 2D, file holds shape {image.array.shape}")
        array, reached = preprocess_image(array, image.spacing[:2], row.modality, plan)
        write_array(root / f"{volume_id}.npy", array)
        meta = {
            "volume_id": volume_id,
            "file": f"{volume_id}.npy",
            "shape": [int(s) for s in array.shape],
            "spacing": [round(float(s), 6) for s in reached],
            "modality": modality_key(row.modality),
            "patient": row.patient,
            "study": row.study,
            "pad_value": float(array.min()),
            "sha256": row.sha256,
        }
        atomic_write_bytes(
            root / f"{volume_id}.json", json.dumps(meta).encode()
        )  # last: marks it done
        return meta
    except (MedsslError, OSError, ValueError, RuntimeError) as exc:
        return {"volume_id": volume_id, "error": f"{type(exc).__name__}: {exc}"}


# building ---------------------------------------------------------------------------------
def _done(root: Path, row: VolumeRow) -> bool:
    meta = root / f"{row.volume_id}.json"
    if not (meta.is_file() and (root / f"{row.volume_id}.npy").is_file()):
        return False
    return json.loads(meta.read_text()).get("sha256") == row.sha256


def build_image_cache(
    store: str | Path,
    plan: Plan,
    workers: int = 1,
    progress: bool = True,
    max_pixels: int = MAX_PIXELS,
) -> ImageIndex:
    """Cache every 2D image not cached yet, then write the index; returns it (module doc)."""
    store = Path(store)
    root = image_cache_dir(store, plan)
    rows = planned_images(store)
    wanted = {r.volume_id: r.sha256 for r in rows}
    existing = ImageIndex.read(root)
    if existing is not None and not existing.failed and existing.covers(wanted):
        return existing
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root):
        existing = ImageIndex.read(root)
        if existing is not None and not existing.failed and existing.covers(wanted):
            return existing
        remove_stale_temporaries(root)
        todo = [r for r in rows if not _done(root, r)]
        context = (str(store), str(root), plan.to_json(), int(max_pixels))
        failed = (
            run_volume_jobs(
                "caching 2D images",
                cache_image,
                todo,
                init_image_worker,
                context,
                workers,
                progress,
            )
            if todo
            else []
        )
        images = [
            CachedImage.from_dict(json.loads((root / f"{r.volume_id}.json").read_text()))
            for r in rows
            if r.volume_id not in failed and _done(root, r)
        ]
        payload = {
            "version": INDEX_VERSION,
            "plan_hash": plan.hash,
            "images": [dataclasses.asdict(v) for v in images],
            "failed": failed,
        }
        atomic_write_bytes(root / INDEX_FILE, json.dumps(payload, indent=1).encode())
    return ImageIndex(root, plan.hash, tuple(images), tuple(failed))


def ensure_image_cache(
    store: str | Path,
    plan: Plan,
    workers: int = 1,
    progress: bool = True,
    timeout_s: float = 24 * 3600.0,
    poll_s: float = 2.0,
) -> ImageIndex:
    """The image index from any rank: rank 0 builds if needed, others wait for a covering index."""
    root = image_cache_dir(store, plan)
    expected = {r.volume_id: r.sha256 for r in planned_images(store)}
    index = ImageIndex.read(root)
    if index is not None and index.covers(expected):
        return index
    if distributed_rank() == 0:
        return build_image_cache(store, plan, workers, progress)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        index = ImageIndex.read(root)
        if index is not None and index.covers(expected):
            return index
    raise TimeoutError(
        f"2D image cache {root}: no complete index after {timeout_s:.0f} s; is rank 0 building it?"
    )
