"""The ``index.json`` of a cache of memory-mapped arrays: the volume and the 2D image caches.

An index names its folder, the plan it was built under, one entry per cached array (each
with ``volume_id``, ``file`` relative to the folder and the ``sha256`` of the store file it
was made from) and the ids that failed. Written last, after every array and sidecar: an
index that covers the wanted set means the cache is complete
(:mod:`medssl.preprocess.build_once`). Subclasses name their entry type, the JSON key of
the entries and the index version; the file layout is theirs, byte for byte.
:class:`ArrayCacheBuilder` is the build-once half such a cache shares: one array per manifest
row, current while its sidecar names the row's store file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, Protocol, TypeVar

import numpy as np

from medssl.preprocess.build_once import (
    INDEX_FILE,
    BuildOnce,
    array_current,
    index_covers,
    read_index_json,
    read_sidecar,
    write_index_json,
)
from medssl.store.volume_row import VolumeRow


class CachedArray(Protocol):
    volume_id: str
    file: str
    sha256: str


EntryT = TypeVar("EntryT", bound=CachedArray)
IndexT = TypeVar("IndexT", bound="ArrayIndex")


@dataclass(frozen=True)
class ArrayIndex(Generic[EntryT]):
    """``index.json`` read back: ``root`` folder, ``plan_hash``, ``entries``, ``failed`` ids."""

    root: Path
    plan_hash: str
    entries: tuple[EntryT, ...]
    failed: tuple[str, ...] = ()

    VERSION: ClassVar[int]
    ENTRIES: ClassVar[str]  # the JSON key of the entries
    ENTRY: ClassVar[type]  # with ``from_dict``

    def open(self, entry: EntryT) -> np.ndarray:
        """The entry's array as a read-only memory map (no bytes read yet)."""
        return np.load(self.root / entry.file, mmap_mode="r")

    def covers(self, wanted: Mapping[str, str]) -> bool:
        """Whether this index holds exactly ``wanted`` (volume_id → sha256 of its store file)."""
        return index_covers({e.volume_id: e.sha256 for e in self.entries}, self.failed, wanted)

    def header(self) -> dict:
        """JSON fields between ``plan_hash`` and the entries (none by default)."""
        return {}

    @classmethod
    def header_fields(cls, data: dict) -> dict:
        """Constructor arguments read from those fields."""
        return {}

    @classmethod
    def read(cls, root: Path):
        data = read_index_json(Path(root) / INDEX_FILE, cls.VERSION)
        if data is None:
            return None
        entries = tuple(cls.ENTRY.from_dict(v) for v in data[cls.ENTRIES])
        return cls(Path(root), data["plan_hash"], entries, tuple(data.get("failed", ())), **cls.header_fields(data))

    @classmethod
    def collect(cls, root: Path, plan_hash: str, done_ids: Iterable[str], failed: list[str], **header):
        """The index of the done entries (their sidecars), written to ``root/index.json``."""
        entries = tuple(cls.ENTRY.from_dict(read_sidecar(root, vid)) for vid in done_ids if vid not in failed)
        index = cls(root, plan_hash, entries, tuple(failed), **header)
        payload = {
            "version": cls.VERSION,
            "plan_hash": plan_hash,
            **index.header(),
            cls.ENTRIES: [dataclasses.asdict(e) for e in entries],
            "failed": list(failed),
        }
        write_index_json(root / INDEX_FILE, payload)
        return index


class ArrayCacheBuilder(BuildOnce[IndexT, VolumeRow]):
    """A build-once cache of one array per manifest row: a job is current when its ``.npy``
    and sidecar exist and the sidecar names the row's store file (sha256); the index is
    ``INDEX`` collected from the sidecars. Subclasses give the folder, the rows, the worker
    and, if their index has one, its header (``index_header``)."""

    INDEX: ClassVar[type]
    plan_hash: str

    def key(self, job: VolumeRow) -> str:
        return job.sha256

    def read_index(self) -> IndexT | None:
        return self.INDEX.read(self.root)

    def done(self, job: VolumeRow) -> bool:
        return array_current(self.root, job.volume_id, job.sha256)

    def index_header(self) -> dict:
        return {}

    def write_index(self, failed: list[str]) -> IndexT:
        done = [row.volume_id for row in self.jobs if self.done(row)]
        return self.INDEX.collect(self.root, self.plan_hash, done, failed, **self.index_header())
