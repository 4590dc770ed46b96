"""The label cache: each labelled, cached volume's label map on exactly its cached image grid.

Beside the image cache (:mod:`medssl.data.cache`) in ``STORE/cache/<plan_hash>/``:
``<volume_id>.labels.npy`` (``[X, Y, Z]`` uint8/uint16, the store's label map through
:func:`~medssl.inference.preprocess.preprocess_labels`: nearest-neighbour onto the grid of
``<volume_id>.npy``) and ``<volume_id>.labels.json`` (the cached grid's affine, structures,
classes, and the store's world boxes converted to cached voxels, see :mod:`medssl.data.boxes`),
then ``labels.index.json`` last. A record with classes or boxes but no map gets a ``.json``
only.

A volume is redone when its record (map sha256, structures, classes, boxes) or its store
volume changes; a changed record with the same map sha256 rewrites only the ``.json``. The
build runs in the image cache's worker pool, writes atomically, resumes after a kill and
holds the cache folder's lock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medssl.atomic import atomic_write_bytes, remove_stale_temporaries
from medssl.data.boxes import cached_affine, component_boxes, world_to_voxel_boxes
from medssl.data.cache import (
    CacheIndex,
    distributed_rank,
    exclusive_lock,
    planned_volumes,
    run_volume_jobs,
    write_array,
)
from medssl.errors import MedsslError
from medssl.inference.preprocess import preprocess_labels
from medssl.store.labels import LabelRecord, read_label_map, read_labels
from medssl.store.plan import Plan
from medssl.store.volume_row import VolumeRow

log = logging.getLogger("medssl.cache")
LABEL_INDEX_FILE = "labels.index.json"
LABEL_CACHE_VERSION = 1


@dataclass(frozen=True)
class CachedLabels:
    """One volume's labels on its cached grid.

    ``file``: the ``.labels.npy`` relative to the cache folder (None without a map);
    ``affine``: cached voxel → RAS mm ``[4, 4]``; ``boxes``: the store's world boxes as
    ``(label, (x0, y0, z0, x1, y1, z1))`` in cached voxel edges; ``components``: the boxes
    of the connected components of each structure in the cached map, ``(value, box)``.
    """

    volume_id: str
    file: str | None
    shape: tuple[int, int, int]
    affine: tuple[tuple[float, ...], ...]
    structures: dict[int, str]
    classes: tuple[str, ...]
    boxes: tuple[tuple[str, tuple[float, ...]], ...]
    components: tuple[tuple[int, tuple[float, ...]], ...]
    mask_sha256: str | None
    digest: str  # of the record and its store volume: what makes this entry current

    @classmethod
    def from_dict(cls, data: dict) -> CachedLabels:
        return cls(
            volume_id=data["volume_id"],
            file=data["file"],
            shape=tuple(int(s) for s in data["shape"]),
            affine=tuple(tuple(float(v) for v in row) for row in data["affine"]),
            structures={int(k): str(v) for k, v in data["structures"].items()},
            classes=tuple(data["classes"]),
            boxes=tuple((str(label), tuple(float(v) for v in box)) for label, box in data["boxes"]),
            components=tuple((int(value), tuple(float(v) for v in box)) for value, box in data["components"]),
            mask_sha256=data["mask_sha256"],
            digest=data["digest"],
        )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["structures"] = {str(k): v for k, v in self.structures.items()}
        return data


@dataclass(frozen=True)
class LabelCache:
    """``labels.index.json`` read back: the cache folder and its entries by volume_id."""

    root: Path
    entries: dict[str, CachedLabels]
    failed: tuple[str, ...] = ()

    def open(self, entry: CachedLabels) -> np.ndarray:
        """The label map as a read-only memory map ``[X, Y, Z]``."""
        if entry.file is None:
            raise ValueError(f"volume {entry.volume_id} has no label map (classes or boxes only)")
        return np.load(self.root / entry.file, mmap_mode="r")

    def covers(self, wanted: dict[str, str]) -> bool:
        have = {vid: e.digest for vid, e in self.entries.items()}
        return set(have) | set(self.failed) == set(wanted) and all(wanted[v] == d for v, d in have.items())

    @classmethod
    def read(cls, root: Path) -> LabelCache | None:
        path = Path(root) / LABEL_INDEX_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if data.get("version") != LABEL_CACHE_VERSION:
            return None
        entries = {e["volume_id"]: CachedLabels.from_dict(e) for e in data["entries"]}
        return cls(Path(root), entries, tuple(data.get("failed", ())))


def record_digest(record: LabelRecord, image_sha256: str) -> str:
    """What an entry is made from: the record's fields and the sha256 of its store volume."""
    payload = json.dumps([dataclasses.asdict(record), image_sha256], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class LabelJob:
    """One labelled volume to cache: its label record, its manifest row, the cached image's
    shape ``(X, Y, Z)`` and the digest that makes its entry current (:func:`record_digest`)."""

    volume_id: str
    record: LabelRecord
    row: VolumeRow
    cached_shape: tuple[int, int, int]
    digest: str


def label_jobs(store: str | Path, plan: Plan, index: CacheIndex) -> list[LabelJob]:
    """One job per labelled volume the image cache holds."""
    records = read_labels(store)
    cached = {v.volume_id: v for v in index.volumes}
    rows = {r.volume_id: r for r in planned_volumes(store, plan)}
    jobs = []
    for volume_id, record in sorted(records.items()):
        if volume_id not in cached or volume_id not in rows:
            continue  # not planned (2D, thin) or failed to cache: nothing to label
        row = rows[volume_id]
        jobs.append(LabelJob(volume_id, record, row, cached[volume_id].shape, record_digest(record, row.sha256)))
    return jobs


def build_label_cache(store: str | Path, plan: Plan, index: CacheIndex, workers: int = 1, progress: bool = True) -> LabelCache:
    """Cache every labelled volume of ``index`` not cached (or changed) yet; returns the label index."""
    store, root = Path(store), index.root
    jobs = label_jobs(store, plan, index)
    wanted = {j.volume_id: j.digest for j in jobs}
    existing = LabelCache.read(root)
    if existing is not None and not existing.failed and existing.covers(wanted):
        return existing
    with exclusive_lock(root):
        existing = LabelCache.read(root)
        if existing is not None and not existing.failed and existing.covers(wanted):
            return existing
        remove_stale_temporaries(root)
        todo = [j for j in jobs if _entry_digest(root, j.volume_id) != j.digest]
        failed: list[str] = []
        if todo:
            context = (str(store), str(root), plan.to_json())
            failed = run_volume_jobs("caching labels", cache_labels, todo, init_label_worker, context, workers, progress)
        return _write_label_index(root, jobs, failed)


def ensure_label_cache(store: str | Path, plan: Plan, index: CacheIndex, workers: int = 1, progress: bool = True, timeout_s: float = 24 * 3600.0, poll_s: float = 2.0) -> LabelCache:
    """The label cache from any rank: rank 0 builds (if needed), others wait for an index that covers the store."""
    wanted = {j.volume_id: j.digest for j in label_jobs(store, plan, index)}
    cache = LabelCache.read(index.root)
    if cache is not None and cache.covers(wanted):
        return cache
    if distributed_rank() == 0:
        return build_label_cache(store, plan, index, workers, progress)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        cache = LabelCache.read(index.root)
        if cache is not None and cache.covers(wanted):
            return cache
    raise TimeoutError(f"label cache {index.root}: no complete index after {timeout_s:.0f} s; is rank 0 building it?")


def _meta_path(root: Path, volume_id: str) -> Path:
    return root / f"{volume_id}.labels.json"


def _entry_digest(root: Path, volume_id: str) -> str | None:
    meta = _meta_path(root, volume_id)
    return json.loads(meta.read_text()).get("digest") if meta.is_file() else None


def _write_label_index(root: Path, jobs: list[LabelJob], failed: list[str]) -> LabelCache:
    entries = {}
    for job in jobs:
        vid = job.volume_id
        if vid not in failed and _entry_digest(root, vid) == job.digest:
            entries[vid] = CachedLabels.from_dict(json.loads(_meta_path(root, vid).read_text()))
    payload = {"version": LABEL_CACHE_VERSION, "entries": [e.to_dict() for e in entries.values()], "failed": list(failed)}
    atomic_write_bytes(root / LABEL_INDEX_FILE, json.dumps(payload, indent=1).encode())
    return LabelCache(root, entries, tuple(failed))


# the worker -----------------------------------------------------------------------------
_CTX: dict = {}


def init_label_worker(store: str, root: str, plan_json: str) -> None:
    if multiprocessing.current_process().name != "MainProcess":
        torch.set_num_threads(1)
    _CTX.update(store=Path(store), root=Path(root), plan=Plan.from_json(plan_json))


def cache_labels(job: LabelJob) -> dict:
    """Cache one volume's labels; returns its :class:`CachedLabels` fields, or ``{"volume_id", "error"}``."""
    store, root, plan = _CTX["store"], _CTX["root"], _CTX["plan"]
    record, row, volume_id = job.record, job.row, job.volume_id
    try:
        cached_shape = job.cached_shape
        store_affine = np.asarray(row.affine, dtype=np.float64)
        store_shape = row.shape
        file, components = None, []
        if record.mask_path is not None:
            file = f"{volume_id}.labels.npy"
            previous = _meta_path(root, volume_id)
            same_map = previous.is_file() and json.loads(previous.read_text()).get("mask_sha256") == record.mask_sha256
            if same_map and (root / file).is_file():
                labels = np.load(root / file)
            else:
                labels = preprocessed_label_map(store, record, store_affine, store_shape, cached_shape, plan)
                write_array(root / file, labels)
            values = sorted(record.structures)
            found, which = component_boxes(labels, values)
            components = [(values[c], [float(v) for v in box]) for c, box in zip(which.tolist(), found)]
            del labels
        affine = cached_affine(store_affine, store_shape, cached_shape)
        boxes = []
        if record.boxes:
            lower = np.array([b.min for b in record.boxes])
            upper = np.array([b.max for b in record.boxes])
            voxel = world_to_voxel_boxes(lower, upper, affine)
            boxes = [(b.label, [round(float(v), 4) for v in box]) for b, box in zip(record.boxes, voxel)]
        entry = CachedLabels.from_dict({
            "volume_id": volume_id,
            "file": file,
            "shape": cached_shape,
            "affine": affine.tolist(),
            "structures": {str(k): v for k, v in record.structures.items()},
            "classes": list(record.classes),
            "boxes": boxes,
            "components": components,
            "mask_sha256": record.mask_sha256,
            "digest": job.digest,
        })
        atomic_write_bytes(_meta_path(root, volume_id), json.dumps(entry.to_dict()).encode())  # last: marks it done
        return entry.to_dict()
    except (MedsslError, OSError, ValueError, RuntimeError) as exc:
        return {"volume_id": volume_id, "error": f"{type(exc).__name__}: {exc}"}


def preprocessed_label_map(store: Path, record: LabelRecord, store_affine: np.ndarray, store_shape: tuple[int, ...], cached_shape: tuple[int, ...], plan: Plan) -> np.ndarray:
    """The record's label map on the cached grid; ValueError when either grid does not match."""
    labels = read_label_map(store, record)
    if tuple(labels.shape) != tuple(store_shape):
        raise ValueError(f"label map of volume {record.volume_id}: shape {tuple(labels.shape)} differs from the volume's {tuple(store_shape)}")
    spacing = tuple(float(v) for v in np.linalg.norm(store_affine[:3, :3], axis=0))
    out = preprocess_labels(labels, spacing, plan)
    if tuple(out.shape) != tuple(cached_shape):
        raise ValueError(f"label map of volume {record.volume_id}: preprocessed shape {tuple(out.shape)} differs from the cached image's {tuple(cached_shape)}")
    return out
