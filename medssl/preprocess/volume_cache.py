"""The preprocessing cache: each planned volume resampled and normalised once, memory-mapped after.

Layout: ``STORE/cache/<plan_hash>/<volume_id>.npy`` (uncompressed ``[X, Y, Z]`` in the
plan's ``cache_dtype``, RAS voxel order at the plan's spacing), ``<volume_id>.json`` beside
it (shape, spacing reached, padding value, modality, patient pseudonym), and
``index.json``, written last. ``np.load(mmap_mode="r")`` maps a file instead of reading
it, so every loader worker and every rank on a machine shares one copy in the page cache
and a crop reads only its own pages.

The build runs in worker processes, skips what exists (a killed build resumes; a second
build writes nothing), writes every file atomically and holds an exclusive lock while it
works. :func:`ensure_cache` is safe on every rank: rank 0 builds, others wait for an
index that covers the store.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medssl.atomic import atomic_write_bytes, atomic_writer, remove_stale_temporaries
from medssl.progress import Progress
from medssl.store.manifest import Manifest
from medssl.store.plan import Plan, frame_rows, modality_key
from medssl.store.volume_row import VolumeRow
from medssl.store.workers import WorkerPool

log = logging.getLogger("medssl.cache")
INDEX_FILE = "index.json"
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
class CacheIndex:
    """``index.json`` read back: the cache folder, its plan hash and volumes, and the volumes that failed."""

    root: Path
    plan_hash: str
    dtype: str
    volumes: tuple[CachedVolume, ...]
    failed: tuple[str, ...] = ()

    def open(self, volume: CachedVolume) -> np.ndarray:
        """The volume as a read-only memory map ``[X, Y, Z]`` (no bytes read yet)."""
        return np.load(self.root / volume.file, mmap_mode="r")

    def covers(self, wanted: dict[str, str]) -> bool:
        """Whether this index holds exactly ``wanted`` (volume_id → sha256 of its store file)."""
        return index_covers(self.volumes, self.failed, wanted)

    @classmethod
    def read(cls, root: Path) -> CacheIndex | None:
        data = read_index_json(root, INDEX_VERSION)
        if data is None:
            return None
        volumes = tuple(CachedVolume.from_dict(v) for v in data["volumes"])
        return cls(Path(root), data["plan_hash"], data["dtype"], volumes, tuple(data.get("failed", ())))


def index_covers(entries, failed: tuple[str, ...], wanted: dict[str, str]) -> bool:
    """Whether cached ``entries`` (with ``volume_id``, ``sha256``) plus ``failed`` ids are exactly ``wanted``."""
    have = {e.volume_id: e.sha256 for e in entries}
    return set(have) | set(failed) == set(wanted) and all(wanted[i] == sha for i, sha in have.items())


def read_index_json(root: str | Path, version: int) -> dict | None:
    """A cache folder's ``index.json``; None when absent or written by another index version
    (another medssl: the cache is rebuilt, never misread)."""
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if data.get("version") == version else None


def cache_dir(store: str | Path, plan: Plan) -> Path:
    return Path(store) / "cache" / plan.hash


def planned_volumes(store: str | Path, plan: Plan) -> list[VolumeRow]:
    """The 3D units the plan selects (volumes thick enough to crop; each frame of a 4D series
    on its own, see :func:`~medssl.store.plan.frame_rows`), in volume_id order."""
    with Manifest(Path(store) / "manifest.sqlite") as manifest:
        return [unit for row in manifest.volumes() if plan.selects(row) for unit in frame_rows(row)]


def build_cache(store: str | Path, plan: Plan, workers: int = 1, progress: bool = True) -> CacheIndex:
    """Cache every planned volume not cached yet, then write the index; returns it.

    Nothing is written when the index already covers the store. A volume that cannot be
    read or crashes its worker twice is logged and listed under ``failed``; the next
    ``build_cache`` tries it again (``ensure_cache`` accepts an index with failures).
    """
    store = Path(store)
    root = cache_dir(store, plan)
    rows = planned_volumes(store, plan)
    wanted = {r.volume_id: r.sha256 for r in rows}
    existing = CacheIndex.read(root)
    if existing is not None and not existing.failed and existing.covers(wanted):
        return existing
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root):
        existing = CacheIndex.read(root)  # another builder may have finished while we waited
        if existing is not None and not existing.failed and existing.covers(wanted):
            return existing
        remove_stale_temporaries(root)
        if not (root / "plan.json").is_file():
            atomic_write_bytes(root / "plan.json", plan.to_json().encode())
        todo = [r for r in rows if not _done(root, r)]
        failed: list[str] = []
        if todo:
            failed = _run(store, root, plan, todo, workers, progress)
        index = _write_index(root, plan, rows, failed)
    return index


def ensure_cache(store: str | Path, plan: Plan, workers: int = 1, progress: bool = True, timeout_s: float = 24 * 3600.0, poll_s: float = 2.0) -> CacheIndex:
    """The cache index, from any rank: rank 0 builds (if needed); others wait until an index covers the store."""
    root = cache_dir(store, plan)
    expected = {r.volume_id: r.sha256 for r in planned_volumes(store, plan)}
    index = CacheIndex.read(root)
    if index is not None and index.covers(expected):
        return index
    if distributed_rank() == 0:
        return build_cache(store, plan, workers, progress)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        index = CacheIndex.read(root)
        if index is not None and index.covers(expected):
            return index
    raise TimeoutError(f"cache {root}: no complete index after {timeout_s:.0f} s; is rank 0 building it?")


def distributed_rank() -> int:
    """The global rank: from torch.distributed when initialised, else the launcher's environment."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


# building -------------------------------------------------------------------------------
class exclusive_lock:
    """``flock`` on ``<cache>/.lock``: one builder per cache folder at a time on this machine."""

    def __init__(self, root: Path) -> None:
        self.path = root / ".lock"

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _done(root: Path, row: VolumeRow) -> bool:
    """Cached, and from the store file the manifest names now (the .json is written last)."""
    meta = root / f"{row.volume_id}.json"
    if not (meta.is_file() and (root / f"{row.volume_id}.npy").is_file()):
        return False
    return json.loads(meta.read_text()).get("sha256") == row.sha256


def _run(store: Path, root: Path, plan: Plan, todo: list[VolumeRow], workers: int, progress: bool) -> list[str]:
    from medssl.data import cache_work

    context = (str(store), str(root), plan.to_json())
    return run_volume_jobs("caching", cache_work.cache_volume, todo, cache_work.init_worker, context, workers, progress)


def run_volume_jobs(description: str, fn, rows: list, initializer, context: tuple, workers: int, progress: bool) -> list[str]:
    """``fn(row)`` for each row (anything with a ``volume_id``: a :class:`VolumeRow`, a label
    job) in a :class:`WorkerPool` (``initializer(*context)`` per worker) with a progress bar;
    ``fn`` returns a dict with ``"error"`` on failure. Returns the sorted volume_ids that failed
    or crashed their worker twice (logged)."""
    failed: list[str] = []
    jobs = [(fn, (row,)) for row in rows]

    def crashed(job) -> dict:
        return {"volume_id": job[1][0].volume_id, "error": "worker crashed twice"}

    if workers <= 1:
        initializer(*context)  # the inline pool runs jobs here, without an initializer
    with Progress(enabled=progress) as bar, WorkerPool(workers, initializer, context) as pool:
        task = bar.task(description, total=len(rows))
        for outcome in pool.run(jobs, max(2, workers * 2), crashed):
            if "error" in outcome:
                log.warning("%s: volume %s skipped: %s", description, outcome["volume_id"], outcome["error"])
                failed.append(outcome["volume_id"])
            bar.advance(task)
    return sorted(failed)


def _write_index(root: Path, plan: Plan, rows: list[VolumeRow], failed: list[str]) -> CacheIndex:
    volumes = []
    for row in rows:
        if row.volume_id in failed or not _done(root, row):
            continue
        meta = json.loads((root / f"{row.volume_id}.json").read_text())
        volumes.append(CachedVolume.from_dict(meta))
    index = CacheIndex(root, plan.hash, plan.cache_dtype, tuple(volumes), tuple(failed))
    payload = {
        "version": INDEX_VERSION,
        "plan_hash": plan.hash,
        "dtype": plan.cache_dtype,
        "volumes": [dataclasses.asdict(v) for v in volumes],
        "failed": list(failed),
    }
    atomic_write_bytes(root / INDEX_FILE, json.dumps(payload, indent=1).encode())
    return index


def write_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` through :func:`~medssl.atomic.atomic_writer`: no reader ever maps a partial file."""
    with atomic_writer(path) as f:
        np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


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
