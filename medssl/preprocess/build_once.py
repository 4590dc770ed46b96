"""The build-once mechanism of the preprocessing caches (volumes, label maps, 2D images).

A cache folder holds one set of files per job, its ``.json`` sidecar written last (it marks
the job done), and an index written last of all. :meth:`BuildOnce.build` makes the folder
current: read the index and stop if it covers the wanted jobs without failures; else take
the folder's lock, read it again (another builder may have finished while we waited),
remove the temporaries a killed build left, run the jobs not done yet in a
:class:`~medssl.store.workers.WorkerPool` with a progress bar, write the index. A killed
build resumes; a second build writes nothing; every file is written atomically.

:meth:`BuildOnce.ensure` is safe on every rank: an index that covers the wanted jobs is
used as it is (failures accepted: an explicit build retries them); rank 0 builds; the other
ranks poll until an index covers the wanted jobs, or time out.

A cache is a thin subclass naming its jobs (anything with a ``volume_id``), each job's
coverage key (the sha256 of its store file, a label record's digest), when a job is done,
the worker that does one, and how its index is read and written.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, Protocol, TypeVar

import numpy as np

from medssl.atomic import atomic_write_bytes, atomic_writer, remove_stale_temporaries
from medssl.progress import Progress
from medssl.store.workers import WorkerPool

log = logging.getLogger("medssl.cache")
INDEX_FILE = "index.json"
WAIT_TIMEOUT_S = 24 * 3600.0  # how long other ranks wait for rank 0's build
POLL_S = 2.0


class Job(Protocol):
    @property
    def volume_id(self) -> str: ...


class Index(Protocol):
    """An index read back: what it failed on, and whether it covers ``wanted``
    (volume_id → coverage key)."""

    @property
    def failed(self) -> tuple[str, ...]: ...

    def covers(self, wanted: Mapping[str, str]) -> bool: ...


JobT = TypeVar("JobT", bound=Job)
IndexT = TypeVar("IndexT", bound=Index)


@dataclass(frozen=True)
class Worker:
    """What does one job: ``fn(job)`` in a process set up by ``initializer(*context)``. Both
    module-level functions (spawned workers import them); ``fn`` returns the job's sidecar
    fields, or a dict with ``"volume_id"`` and ``"error"``."""

    fn: Callable[..., dict]
    initializer: Callable[..., None]
    context: tuple


class BuildOnce(ABC, Generic[IndexT, JobT]):
    """One cache folder at ``root`` that should cover ``jobs`` (module doc)."""

    name: ClassVar[str]  # in messages: "cache", "label cache", "2D image cache"
    description: ClassVar[str]  # of the progress bar

    def __init__(self, root: Path, jobs: Sequence[JobT]) -> None:
        self.root, self.jobs = Path(root), list(jobs)

    @abstractmethod
    def key(self, job: JobT) -> str:
        """What makes the job's cached files current (compared with the index's)."""

    @abstractmethod
    def read_index(self) -> IndexT | None:
        """The folder's index; None when absent or of another version."""

    @abstractmethod
    def done(self, job: JobT) -> bool:
        """Whether the job's files are on disk and current."""

    @abstractmethod
    def worker(self) -> Worker: ...

    @abstractmethod
    def write_index(self, failed: list[str]) -> IndexT:
        """Write the index of the jobs done (``failed``: the ids that failed this build); return it."""

    def prepare(self) -> None:
        """Run under the lock before the jobs (the volume cache writes its ``plan.json``)."""

    @property
    def wanted(self) -> dict[str, str]:
        return {job.volume_id: self.key(job) for job in self.jobs}

    def build(self, workers: int = 1, progress: bool = True) -> IndexT:
        """Run every job not done yet, then write the index; returns it. Nothing is written
        when the index already covers the jobs without failures."""
        wanted = self.wanted
        existing = self.read_index()
        if _complete(existing, wanted):
            return existing
        self.root.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.root):
            existing = self.read_index()  # another builder may have finished while we waited
            if _complete(existing, wanted):
                return existing
            remove_stale_temporaries(self.root)
            self.prepare()
            todo = [job for job in self.jobs if not self.done(job)]
            failed = run_jobs(self.description, self.worker(), todo, workers, progress) if todo else []
            return self.write_index(failed)

    def ensure(self, workers: int = 1, progress: bool = True, timeout_s: float = WAIT_TIMEOUT_S, poll_s: float = POLL_S) -> IndexT:
        """The index, from any rank: rank 0 builds (if needed); others wait until an index covers the jobs."""
        wanted = self.wanted
        index = self.read_index()
        if index is not None and index.covers(wanted):
            return index
        if distributed_rank() == 0:
            return self.build(workers, progress)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(poll_s)
            index = self.read_index()
            if index is not None and index.covers(wanted):
                return index
        raise TimeoutError(f"{self.name} {self.root}: no complete index after {timeout_s:.0f} s; is rank 0 building it?")


def _complete(index: Index | None, wanted: Mapping[str, str]) -> bool:
    return index is not None and not index.failed and index.covers(wanted)


def run_jobs(description: str, worker: Worker, jobs: Sequence[Job], workers: int, progress: bool) -> list[str]:
    """``worker.fn(job)`` for each job in a :class:`WorkerPool` with a progress bar. Returns
    the sorted volume_ids that failed or crashed their worker twice (logged)."""
    failed: list[str] = []

    def crashed(call) -> dict:
        return {"volume_id": call[1][0].volume_id, "error": "worker crashed twice"}

    if workers <= 1:
        worker.initializer(*worker.context)  # the inline pool runs jobs here, without an initializer
    with Progress(enabled=progress) as bar, WorkerPool(workers, worker.initializer, worker.context) as pool:
        task = bar.task(description, total=len(jobs))
        for outcome in pool.run([(worker.fn, (job,)) for job in jobs], max(2, workers * 2), crashed):
            if "error" in outcome:
                log.warning("%s: volume %s skipped: %s", description, outcome["volume_id"], outcome["error"])
                failed.append(outcome["volume_id"])
            bar.advance(task)
    return sorted(failed)


def distributed_rank() -> int:
    """The global rank: from torch.distributed when initialised, else the launcher's environment."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


class exclusive_lock:
    """``flock`` on ``<cache>/.lock``: one builder per cache folder at a time on this machine."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / ".lock"

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# the files --------------------------------------------------------------------------------
def index_covers(have: Mapping[str, str], failed: Sequence[str], wanted: Mapping[str, str]) -> bool:
    """Whether cached entries ``have`` (volume_id → key) plus ``failed`` ids are exactly ``wanted``,
    every entry with the key wanted."""
    return set(have) | set(failed) == set(wanted) and all(wanted[i] == key for i, key in have.items())


def read_index_json(path: Path, version: int) -> dict | None:
    """An index file; None when absent or written by another index version (another medssl:
    the cache is rebuilt, never misread)."""
    path = Path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if data.get("version") == version else None


def write_index_json(path: Path, payload: dict) -> None:
    atomic_write_bytes(path, json.dumps(payload, indent=1).encode())


def read_sidecar(root: Path, volume_id: str, suffix: str = ".json") -> dict:
    return json.loads((Path(root) / f"{volume_id}{suffix}").read_text())


def array_current(root: Path, volume_id: str, sha256: str) -> bool:
    """``<volume_id>.npy`` and its ``.json`` are there (the ``.json`` is written last), made
    from the store file of ``sha256``."""
    meta = Path(root) / f"{volume_id}.json"
    if not (meta.is_file() and (Path(root) / f"{volume_id}.npy").is_file()):
        return False
    return json.loads(meta.read_text()).get("sha256") == sha256


def write_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` through :func:`~medssl.atomic.atomic_writer`: no reader ever maps a partial file."""
    with atomic_writer(path) as f:
        np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
