"""The volume cache: each planned volume resampled and normalised once, memory-mapped after.

Layout: ``STORE/cache/<plan_hash>/<volume_id>.npy`` (uncompressed ``[X, Y, Z]`` in the
plan's ``cache_dtype``, RAS voxel order at the plan's spacing), ``<volume_id>.json`` beside
it (shape, spacing reached, padding value, modality, patient pseudonym), ``plan.json`` and
``index.json``, written last. ``np.load(mmap_mode="r")`` maps a file instead of reading
it, so every loader worker and every rank on a machine shares one copy in the page cache
and a crop reads only its own pages.

Each volume goes through :func:`~medssl.preprocess.stage.preprocess`, the function serving
uses. Built once (:mod:`medssl.preprocess.build_once`): in worker processes, skipping what
exists, atomically, under the folder's lock; :func:`ensure_cache` is safe on every rank.
"""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from medssl.atomic import atomic_write_bytes
from medssl.errors import MedsslError
from medssl.io.nifti import read_nifti
from medssl.preprocess.array_index import ArrayCacheBuilder, ArrayIndex
from medssl.preprocess.build_once import (
    POLL_S,
    WAIT_TIMEOUT_S,
    Worker,
    write_array,
)
from medssl.preprocess.stage import preprocess
from medssl.store.manifest import Manifest
from medssl.store.plan import Plan
from medssl.store.selection import foreground_mask, frame_rows, modality_key
from medssl.store.volume_row import VolumeRow

INDEX_VERSION = 3  # 2: volumes carry the sha256 of their store file; 3: and their body box


@dataclass(frozen=True)
class CachedVolume:
    """One cached volume: ``file`` relative to the cache folder, ``shape`` ``[X, Y, Z]`` at ``spacing`` (mm)."""

    volume_id: str
    file: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    modality: str
    patient: str | None
    study: str | None
    pad_value: float  # the volume's minimum after normalisation: what lies outside it (air, background)
    sha256: str  # of the store file it was made from: a reconverted volume is cached again
    # the body's bounding box in cached voxels, ``(lo_x, lo_y, lo_z, hi_x, hi_y, hi_z)``, hi
    # exclusive (:func:`body_box`): crops report their centre relative to it ("body" key);
    # None: the whole volume
    body_box: tuple[float, float, float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.body_box is None:
            object.__setattr__(self, "body_box", (0.0, 0.0, 0.0, *(float(s) for s in self.shape)))

    @classmethod
    def from_dict(cls, data: dict) -> CachedVolume:
        fixed = {"shape": tuple(int(s) for s in data["shape"]), "spacing": tuple(float(s) for s in data["spacing"])}
        if "body_box" in data:
            fixed["body_box"] = tuple(float(s) for s in data["body_box"])
        return cls(**{**data, **fixed})


@dataclass(frozen=True)
class CacheIndex(ArrayIndex[CachedVolume]):
    """The volume cache's ``index.json``: :class:`~medssl.preprocess.array_index.ArrayIndex` of
    :class:`CachedVolume` (``volumes``) plus the plan's ``dtype``."""

    dtype: str = "float16"

    VERSION: ClassVar[int] = INDEX_VERSION
    ENTRIES: ClassVar[str] = "volumes"
    ENTRY: ClassVar[type] = CachedVolume

    @property
    def volumes(self) -> tuple[CachedVolume, ...]:
        return self.entries

    def header(self) -> dict:
        return {"dtype": self.dtype}

    @classmethod
    def header_fields(cls, data: dict) -> dict:
        return {"dtype": data["dtype"]}


def cache_dir(store: str | Path, plan: Plan) -> Path:
    return Path(store) / "cache" / plan.hash


def planned_volumes(store: str | Path, plan: Plan) -> list[VolumeRow]:
    """The 3D units the plan selects (volumes thick enough to crop; each frame of a 4D series
    on its own, see :func:`~medssl.store.selection.frame_rows`), in volume_id order."""
    with Manifest(Path(store) / "manifest.sqlite") as manifest:
        return [unit for row in manifest.volumes() if plan.selects(row) for unit in frame_rows(row)]


def build_cache(store: str | Path, plan: Plan, workers: int = 1, progress: bool = True) -> CacheIndex:
    """Cache every planned volume not cached yet, then write the index; returns it.

    Nothing is written when the index already covers the store. A volume that cannot be
    read or crashes its worker twice is logged and listed under ``failed``; the next
    ``build_cache`` tries it again (``ensure_cache`` accepts an index with failures).
    """
    return VolumeCacheBuilder(store, plan).build(workers, progress)


def ensure_cache(store: str | Path, plan: Plan, workers: int = 1, progress: bool = True, timeout_s: float = WAIT_TIMEOUT_S, poll_s: float = POLL_S) -> CacheIndex:
    """The cache index, from any rank: rank 0 builds (if needed); others wait until an index covers the store."""
    return VolumeCacheBuilder(store, plan).ensure(workers, progress, timeout_s, poll_s)


class VolumeCacheBuilder(ArrayCacheBuilder[CacheIndex]):
    """The volume cache of ``store`` under ``plan``: one job per planned volume."""

    name = "cache"
    description = "caching"
    INDEX = CacheIndex

    def __init__(self, store: str | Path, plan: Plan) -> None:
        super().__init__(cache_dir(store, plan), planned_volumes(store, plan))
        self.store, self.plan, self.plan_hash = Path(store), plan, plan.hash

    def index_header(self) -> dict:
        return {"dtype": self.plan.cache_dtype}

    def prepare(self) -> None:
        if not (self.root / "plan.json").is_file():
            atomic_write_bytes(self.root / "plan.json", self.plan.to_json().encode())

    def worker(self) -> Worker:
        return Worker(cache_volume, init_worker, (str(self.store), str(self.root), self.plan.to_json()))


# the worker -------------------------------------------------------------------------------
_CTX: dict = {}


def init_worker(store: str, root: str, plan_json: str) -> None:
    if multiprocessing.current_process().name != "MainProcess":
        torch.set_num_threads(1)  # parallel across volumes, not within one
    _CTX.update(store=Path(store), root=Path(root), plan=Plan.from_json(plan_json))


def cache_volume(row: VolumeRow) -> dict:
    """Cache one manifest row; returns its :class:`CachedVolume` fields, or ``{"volume_id", "error"}``."""
    store, root, plan = _CTX["store"], _CTX["root"], _CTX["plan"]
    volume_id = row.volume_id
    try:
        volume = read_nifti((store / row.path).read_bytes())
        if row.frame is not None:  # one frame of a 4D series
            volume.array = np.ascontiguousarray(volume.array[..., row.frame])
        box = body_box(foreground_mask(np.asarray(volume.array), row.modality))  # before normalising
        array, reached = preprocess(volume.array, volume.spacing, row.modality, plan)
        scale = [s / r for s, r in zip(volume.spacing, reached)] * 2  # store voxels -> cached voxels
        del volume
        write_array(root / f"{volume_id}.npy", array)
        meta = cached_volume_meta(row, array.shape, reached, float(array.min()), tuple(b * f for b, f in zip(box, scale)))
        atomic_write_bytes(root / f"{volume_id}.json", json.dumps(meta).encode())  # last: marks the volume done
        return meta
    except (MedsslError, OSError, ValueError, RuntimeError) as exc:
        return {"volume_id": volume_id, "error": f"{type(exc).__name__}: {exc}"}


def body_box(foreground: np.ndarray, quantile: float = 0.005) -> tuple[float, ...]:
    """The body's box ``(lo..., hi...)`` in voxels (hi exclusive) from a foreground mask ``[X, Y, Z]``.

    Only the largest connected component counts, and of it the ``quantile`` .. ``1 - quantile``
    range of voxel positions per axis, so a table, a noise line or a stray bright voxel does not
    stretch the box. An empty mask gives the whole array.
    """
    from scipy import ndimage

    if foreground.ndim != 3:
        raise ValueError(f"body_box needs a 3D mask [X, Y, Z], got shape {foreground.shape}")
    labels, count = ndimage.label(foreground)
    if count == 0:
        return (0.0, 0.0, 0.0, *(float(s) for s in foreground.shape))
    sizes = np.bincount(labels.reshape(-1))[1:]
    points = np.nonzero(labels == 1 + int(sizes.argmax()))
    lo = [float(np.quantile(p, quantile)) for p in points]
    hi = [float(np.quantile(p, 1.0 - quantile)) + 1.0 for p in points]
    return (*lo, *hi)


def cached_volume_meta(row: VolumeRow, shape: tuple[int, ...], spacing: tuple[float, ...], pad_value: float, body: tuple[float, ...] | None = None) -> dict:
    """The ``.json`` sidecar; ``body`` is the body box in cached voxels (default: the whole volume)."""
    body = (0.0, 0.0, 0.0, *(float(s) for s in shape)) if body is None else body
    return {
        "volume_id": row.volume_id,
        "file": f"{row.volume_id}.npy",
        "shape": [int(s) for s in shape],
        "spacing": [round(float(s), 6) for s in spacing],
        "modality": modality_key(row.modality),
        "patient": row.patient,
        "study": row.study,
        "pad_value": float(pad_value),
        "sha256": row.sha256,
        "body_box": [round(float(b), 4) for b in body],
    }
