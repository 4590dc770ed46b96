"""What memory a run may use: host RAM (``MemAvailable``, a cgroup limit) and GPU memory.

A budget is the *total* a process may reach, so it is compared with an estimate that
includes what the process holds already: host RAM = this process's resident set now + the
memory still available to it (the smaller of ``MemAvailable`` in ``/proc/meminfo`` and the
cgroup's limit minus its usage, page cache it can reclaim not counted as used); a GPU = its
free memory (``torch.cuda.mem_get_info``) + what this process's caching allocator reserved.

``MEDSSL_MEMORY_BUDGET_GB`` (or ``--memory-budget GB``, which wins) overrides both: the
run then plans for that many GiB on the device it trains on and in host RAM.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

GIB = 1 << 30
BUDGET_ENV = "MEDSSL_MEMORY_BUDGET_GB"
_CGROUP_FILES = (  # (limit, usage, stat) of cgroup v2, then v1
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat"),
    (
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        "/sys/fs/cgroup/memory/memory.stat",
    ),
)


@dataclass(frozen=True)
class Budget:
    """``total`` bytes a process may reach on one device, and where the figure came from."""

    total: int
    source: str  # "MemAvailable", "cgroup limit", "cuda:0 free", "MEDSSL_MEMORY_BUDGET_GB", ...

    def __str__(self) -> str:
        return f"{self.total / GIB:.1f} GiB ({self.source})"


def resident_bytes() -> int:
    """This process's resident set now (0 where ``/proc`` is missing)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def override_gb(flag: float | None = None) -> float | None:
    """The budget a user set: ``flag`` (``--memory-budget``) if given, else the environment.

    Raises:
        ValueError: the value is not a positive number (names the variable).
    """
    if flag is not None:
        if not flag > 0:
            raise ValueError(f"--memory-budget {flag}: expected a positive number of GiB")
        return float(flag)
    text = os.environ.get(BUDGET_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{BUDGET_ENV}={text!r}: expected a number of GiB") from None
    if not value > 0:
        raise ValueError(f"{BUDGET_ENV}={text!r}: expected a positive number of GiB")
    return value


def host_budget(flag_gb: float | None = None) -> Budget:
    """Host RAM this process may reach (module doc)."""
    gb = override_gb(flag_gb)
    if gb is not None:
        return Budget(int(gb * GIB), "--memory-budget" if flag_gb is not None else BUDGET_ENV)
    available, source = _meminfo_available(), "MemAvailable"
    cgroup = _cgroup_available()
    if cgroup is not None and cgroup < available:
        available, source = cgroup, "cgroup limit"
    return Budget(resident_bytes() + available, source)


def device_budget(device: torch.device, flag_gb: float | None = None) -> Budget:
    """Memory this process may reach on ``device``: host RAM for the CPU, else the GPU's."""
    if device.type != "cuda":
        return host_budget(flag_gb)
    gb = override_gb(flag_gb)
    if gb is not None:
        return Budget(int(gb * GIB), "--memory-budget" if flag_gb is not None else BUDGET_ENV)
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, _ = torch.cuda.mem_get_info(index)
    return Budget(int(free + torch.cuda.memory_reserved(index)), f"cuda:{index} free")


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")  # no /proc: free pages
    return int(pages * size)


def _cgroup_available() -> int | None:
    for limit_file, usage_file, stat_file in _CGROUP_FILES:
        try:
            text = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text())
        except (OSError, ValueError):
            continue
        if text == "max" or int(text) >= 1 << 60:  # no limit (v1 writes a huge number)
            return None
        reclaimable = 0
        try:
            for line in Path(stat_file).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key in ("inactive_file", "total_inactive_file"):
                    reclaimable = int(value)
                    break
        except (OSError, ValueError):
            pass
        return max(int(text) - usage + reclaimable, 0)
    return None
