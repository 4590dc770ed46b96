"""The label cache: each labelled, cached volume's label map on exactly its cached image grid.

Beside the volume cache (:mod:`medssl.preprocess.volume_cache`) in ``STORE/cache/<plan_hash>/``:
``<volume_id>.labels.npy`` (``[X, Y, Z]`` uint8/uint16, the store's label map through
:func:`~medssl.preprocess.stage.preprocess_labels`: nearest-neighbour onto the grid of
``<volume_id>.npy``) and ``<volume_id>.labels.json`` (the cached grid's affine, structures,
classes, and the store's world boxes converted to cached voxels, see
:mod:`medssl.preprocess.geometry`), then ``labels.index.json`` last. A record with classes
or boxes but no map gets a ``.json`` only.

A volume is redone when its record (map sha256, structures, classes, boxes) or its store
volume changes; a changed record with the same map sha256 rewrites only the ``.json``. Built
once (:mod:`medssl.preprocess.build_once`), like the volume cache: in worker processes,
atomically, resuming after a kill, under the cache folder's lock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medssl.atomic import atomic_write_bytes
from medssl.errors import MedsslError
from medssl.preprocess.build_once import (
    POLL_S,
    WAIT_TIMEOUT_S,
    BuildOnce,
    Worker,
    index_covers,
    read_index_json,
    write_array,
    write_index_json,
)
from medssl.preprocess.geometry import cached_affine, component_boxes, world_to_voxel_boxes
from medssl.preprocess.stage import preprocess_labels
from medssl.preprocess.volume_cache import CacheIndex, planned_volumes
from medssl.store.labels import LabelRecord, read_label_map, read_labels
from medssl.store.plan import Plan
from medssl.store.volume_row import VolumeRow

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
        """Whether this index holds exactly ``wanted`` (volume_id → :func:`record_digest`)."""
        return index_covers({vid: e.digest for vid, e in self.entries.items()}, self.failed, wanted)

    @classmethod
    def read(cls, root: Path) -> LabelCache | None:
        data = read_index_json(Path(root) / LABEL_INDEX_FILE, LABEL_CACHE_VERSION)
        if data is None:
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
    return LabelCacheBuilder(store, plan, index).build(workers, progress)


def ensure_label_cache(store: str | Path, plan: Plan, index: CacheIndex, workers: int = 1, progress: bool = True, timeout_s: float = WAIT_TIMEOUT_S, poll_s: float = POLL_S) -> LabelCache:
    """The label cache from any rank: rank 0 builds (if needed), others wait for an index that covers the store."""
    return LabelCacheBuilder(store, plan, index).ensure(workers, progress, timeout_s, poll_s)


class LabelCacheBuilder(BuildOnce[LabelCache, LabelJob]):
    """The label cache beside the volume cache ``index``: one job per labelled, cached volume."""

    name = "label cache"
    description = "caching labels"

    def __init__(self, store: str | Path, plan: Plan, index: CacheIndex) -> None:
        super().__init__(index.root, label_jobs(store, plan, index))
        self.store, self.plan = Path(store), plan

    def key(self, job: LabelJob) -> str:
        return job.digest

    def read_index(self) -> LabelCache | None:
        return LabelCache.read(self.root)

    def done(self, job: LabelJob) -> bool:
        return _entry_digest(self.root, job.volume_id) == job.digest

    def worker(self) -> Worker:
        return Worker(cache_labels, init_label_worker, (str(self.store), str(self.root), self.plan.to_json()))

    def write_index(self, failed: list[str]) -> LabelCache:
        entries = {
            job.volume_id: CachedLabels.from_dict(json.loads(_meta_path(self.root, job.volume_id).read_text()))
            for job in self.jobs
            if job.volume_id not in failed and self.done(job)
        }
        payload = {"version": LABEL_CACHE_VERSION, "entries": [e.to_dict() for e in entries.values()], "failed": list(failed)}
        write_index_json(self.root / LABEL_INDEX_FILE, payload)
        return LabelCache(self.root, entries, tuple(failed))


def _meta_path(root: Path, volume_id: str) -> Path:
    return root / f"{volume_id}.labels.json"


def _entry_digest(root: Path, volume_id: str) -> str | None:
    meta = _meta_path(root, volume_id)
    return json.loads(meta.read_text()).get("digest") if meta.is_file() else None


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
        file, components = None, []
        if record.mask_path is not None:
            file = f"{volume_id}.labels.npy"
            labels = _cached_label_map(store, root, file, record, store_affine, row.shape, cached_shape, plan)
            values = sorted(record.structures)
            found, which = component_boxes(labels, values)
            components = [(values[c], [float(v) for v in box]) for c, box in zip(which.tolist(), found)]
            del labels
        affine = cached_affine(store_affine, row.shape, cached_shape)
        entry = CachedLabels.from_dict({
            "volume_id": volume_id,
            "file": file,
            "shape": cached_shape,
            "affine": affine.tolist(),
            "structures": {str(k): v for k, v in record.structures.items()},
            "classes": list(record.classes),
            "boxes": _voxel_boxes(record, affine),
            "components": components,
            "mask_sha256": record.mask_sha256,
            "digest": job.digest,
        })
        atomic_write_bytes(_meta_path(root, volume_id), json.dumps(entry.to_dict()).encode())  # last: marks it done
        return entry.to_dict()
    except (MedsslError, OSError, ValueError, RuntimeError) as exc:
        return {"volume_id": volume_id, "error": f"{type(exc).__name__}: {exc}"}


def _cached_label_map(store: Path, root: Path, file: str, record: LabelRecord, store_affine: np.ndarray, store_shape: tuple[int, ...], cached_shape: tuple[int, ...], plan: Plan) -> np.ndarray:
    """The label map already cached from the same map file, else preprocessed and written now."""
    previous = _meta_path(root, record.volume_id)
    same_map = previous.is_file() and json.loads(previous.read_text()).get("mask_sha256") == record.mask_sha256
    if same_map and (root / file).is_file():
        return np.load(root / file)
    labels = preprocessed_label_map(store, record, store_affine, store_shape, cached_shape, plan)
    write_array(root / file, labels)
    return labels


def _voxel_boxes(record: LabelRecord, affine: np.ndarray) -> list[tuple[str, list[float]]]:
    """The record's world boxes as ``(label, box)`` in voxel edges of the grid of ``affine``."""
    if not record.boxes:
        return []
    lower = np.array([b.min for b in record.boxes])
    upper = np.array([b.max for b in record.boxes])
    voxel = world_to_voxel_boxes(lower, upper, affine)
    return [(b.label, [round(float(v), 4) for v in box]) for b, box in zip(record.boxes, voxel)]


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
