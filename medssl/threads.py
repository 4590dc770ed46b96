"""Intra-op threads from the CPU share this process can actually have.

PyTorch's CPU build starts one OpenMP thread per core and, by default, lets idle threads spin
for a while before sleeping. On a machine another job also uses, that is the worst of both:
``n`` threads contend for fewer than ``n`` free cores, every parallel region waits for its
slowest thread (descheduled behind the other job), and the spinning threads burn the share
that was left. The main job fell from 3.15 to 0.42 segmentation steps/s (7.5x) under a load
of about 4 on 2 cores, far worse than the share of CPU it lost.

So a compute command (pretrain, finetune, predict, serve, bench, pipeline) starts with
:func:`configure_threads`:

- threads = the CPUs this process may run on (affinity, a cgroup quota) minus the run queue
  other work already keeps busy (the 1-minute load average, rounded down), at least 1;
- ``OMP_WAIT_POLICY=PASSIVE`` (unless set): waiting threads sleep instead of spinning;
- a user's own choice wins: ``MEDSSL_THREADS=N`` or ``OMP_NUM_THREADS=N`` is used as given.

The load average is a lagging, machine-wide figure. Stages of one ``medssl pipeline`` run in
one process, so each stage's choice subtracts this process's own recent CPU use (CPU seconds
since the previous choice over the wall time since then) from the load before it counts the
other work. A job started just after another one stops may still take fewer threads than it
could; never more than the CPUs it has.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("medssl.threads")


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    cpus: int  # CPUs this process may use (affinity and cgroup quota)
    load: float  # 1-minute load average of the machine when chosen
    reason: str  # "MEDSSL_THREADS", "OMP_NUM_THREADS" or "cpu share"


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this cgroup (v2 ``cpu.max`` or v1 ``cfs_quota/period``), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpus()
    return max(1, min(cpus, math.ceil(quota)) if quota else cpus)


def choose_threads(cpus: int, load: float, env: dict[str, str]) -> ThreadChoice:
    """The number of intra-op threads for ``cpus`` CPUs with ``load`` runnable work already there."""
    for name in ("MEDSSL_THREADS", "OMP_NUM_THREADS"):
        value = env.get(name, "").strip()
        if value:
            try:
                threads = int(value)
            except ValueError:
                raise ValueError(f"{name}={value[:12]!r}: expected a whole number of threads") from None
            if threads < 1:
                raise ValueError(f"{name}={threads}: expected at least 1 thread")
            return ThreadChoice(threads, cpus, load, name)
    free = cpus - math.floor(max(0.0, load))
    return ThreadChoice(max(1, min(cpus, free)), cpus, load, "cpu share")


_last: tuple[float, float] | None = None  # (wall, process CPU seconds) at the previous choice


def own_load() -> float:
    """This process's CPU use (cores busy) since the previous :func:`configure_threads`, 0 at the first."""
    global _last
    now = (time.monotonic(), time.process_time())
    previous, _last = _last, now
    if previous is None or now[0] - previous[0] < 1.0:
        return 0.0
    return max(0.0, (now[1] - previous[1]) / (now[0] - previous[0]))


def configure_threads() -> ThreadChoice:
    """Choose and apply the intra-op threads (call before the first parallel torch op)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    load = max(0.0, load - own_load())
    choice = choose_threads(available_cpus(), load, dict(os.environ))
    import torch

    torch.set_num_threads(choice.threads)
    if choice.reason == "cpu share" and choice.threads < choice.cpus:
        log.info("intra-op threads: %d of %d CPUs (load %.1f from other work; MEDSSL_THREADS=N overrides)", choice.threads, choice.cpus, load)
    return choice
