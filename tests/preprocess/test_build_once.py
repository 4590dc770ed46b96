"""The build-once mechanism on a toy cache: built once, failures retried, rank > 0 waits for rank 0."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from medssl.atomic import TMP_MARK, atomic_write_bytes
from medssl.preprocess.build_once import (
    INDEX_FILE,
    BuildOnce,
    Worker,
    index_covers,
    read_index_json,
    write_index_json,
)

RUNS: list[str] = []  # the jobs the worker ran (workers=1 runs them in this process)
_CTX: dict = {}


@dataclass(frozen=True)
class Job:
    volume_id: str
    content: str


@dataclass(frozen=True)
class ToyIndex:
    entries: dict[str, str]
    failed: tuple[str, ...] = ()

    def covers(self, wanted) -> bool:
        return index_covers(self.entries, self.failed, wanted)


def init_toy(root: str) -> None:
    _CTX["root"] = Path(root)


def make_toy(job: Job) -> dict:
    RUNS.append(job.volume_id)
    if job.content == "bad":
        return {"volume_id": job.volume_id, "error": "ValueError: unreadable"}
    atomic_write_bytes(_CTX["root"] / f"{job.volume_id}.json", json.dumps({"key": job.content}).encode())
    return {"volume_id": job.volume_id}


class ToyCache(BuildOnce[ToyIndex, Job]):
    name = "toy cache"
    description = "toys"

    def key(self, job: Job) -> str:
        return job.content

    def read_index(self) -> ToyIndex | None:
        data = read_index_json(self.root / INDEX_FILE, 1)
        return None if data is None else ToyIndex(data["entries"], tuple(data["failed"]))

    def done(self, job: Job) -> bool:
        path = self.root / f"{job.volume_id}.json"
        return path.is_file() and json.loads(path.read_text())["key"] == job.content

    def worker(self) -> Worker:
        return Worker(make_toy, init_toy, (str(self.root),))

    def write_index(self, failed: list[str]) -> ToyIndex:
        entries = {j.volume_id: j.content for j in self.jobs if j.volume_id not in failed and self.done(j)}
        write_index_json(self.root / INDEX_FILE, {"version": 1, "entries": entries, "failed": failed})
        return ToyIndex(entries, tuple(failed))


@pytest.fixture(autouse=True)
def _fresh_runs(monkeypatch):
    RUNS.clear()
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)


def toy(tmp_path, *contents: str) -> ToyCache:
    return ToyCache(tmp_path / "toy", [Job(f"t{i}", c) for i, c in enumerate(contents)])


def test_build_runs_each_job_once_and_writes_the_index_last(tmp_path):
    cache = toy(tmp_path, "a", "b")
    (cache.root).mkdir()
    (cache.root / f".x{TMP_MARK}.t0.json").write_bytes(b"partial")  # a killed build's leftover
    index = cache.build(progress=False)
    assert RUNS == ["t0", "t1"] and index == ToyIndex({"t0": "a", "t1": "b"})
    assert cache.read_index() == index and not [p for p in cache.root.iterdir() if TMP_MARK in p.name]
    assert cache.build(progress=False) == index and cache.ensure() == index and RUNS == ["t0", "t1"]
    grown = toy(tmp_path, "a", "changed", "c")
    assert grown.build(progress=False).entries == {"t0": "a", "t1": "changed", "t2": "c"}
    assert RUNS == ["t0", "t1", "t1", "t2"]  # only what changed or is new


def test_a_failed_job_is_accepted_by_ensure_and_retried_by_build(tmp_path):
    cache = toy(tmp_path, "a", "bad")
    assert cache.build(progress=False) == ToyIndex({"t0": "a"}, ("t1",))
    assert cache.ensure() == ToyIndex({"t0": "a"}, ("t1",)) and RUNS == ["t0", "t1"]
    cache.build(progress=False)
    assert RUNS == ["t0", "t1", "t1"]


def test_other_ranks_wait_for_the_index_rank_0_writes(tmp_path, monkeypatch):
    cache = toy(tmp_path, "a", "b")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(TimeoutError, match=r"toy cache .*: no complete index after 0 s; is rank 0 building it\?"):
        cache.ensure(timeout_s=0.2, poll_s=0.05)
    result = {}
    waiter = threading.Thread(target=lambda: result.setdefault("index", cache.ensure(timeout_s=60, poll_s=0.05)))
    waiter.start()
    assert not (cache.root / INDEX_FILE).exists() and RUNS == []  # rank 1 never builds
    built = toy(tmp_path, "a", "b").build(progress=False)  # what rank 0 does
    waiter.join(timeout=30)
    assert result["index"] == built and RUNS == ["t0", "t1"]
