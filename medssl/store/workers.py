"""Run ingest work in worker processes, bounded, surviving a worker that dies.

A decoder that segfaults or a worker the kernel kills for memory breaks a
``ProcessPoolExecutor`` for every pending call. :class:`WorkerPool` then starts a fresh
pool and retries the calls that were in flight; a call that was in flight at two crashes
is given up and reported through ``on_crash`` (it becomes a ``rejected`` row), so one
poisonous input cannot stop the run or take the rest with it.

Workers die with the process that started them: on Linux the kernel sends them SIGKILL
when it goes (``PR_SET_PDEATHSIG``), and everywhere a watchdog thread ends a worker whose
parent is gone, so a ``kill -9`` of ``medssl ingest`` leaves no worker (and, with the
workers gone, no resource tracker) behind.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

Job = tuple[Callable, tuple]
PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCHDOG_SECONDS = 1.0


def _worker_start(parent: int, initializer: Callable, initargs: tuple) -> None:
    """Every worker's first call: tie its life to ``parent``, then run the real initializer."""
    bind_to_parent(parent)
    initializer(*initargs)


def bind_to_parent(parent: int) -> None:
    """End this process when ``parent`` ends: the kernel's death signal where there is one,
    and a thread polling the parent id (a process whose parent died is re-parented)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the watchdog below still ends the worker
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="medssl-parent-watchdog", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCHDOG_SECONDS)
    os._exit(1)


class _InlineExecutor(Executor):
    """Runs each call at submit time, in this process (``--workers 1``)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            future.set_exception(exc)
        return future


class WorkerPool:
    """``workers`` processes (spawned clean), or this process when ``workers <= 1``."""

    def __init__(self, workers: int, initializer: Callable, initargs: tuple) -> None:
        self.workers = workers
        self._initializer, self._initargs = initializer, initargs
        self._pool = self._start()

    def _start(self) -> Executor:
        if self.workers <= 1:
            return _InlineExecutor()
        # spawn: children start without the parent's threads and locks (progress bars)
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(self.workers, mp_context=context, initializer=_worker_start, initargs=(os.getpid(), self._initializer, self._initargs))

    def _restart(self) -> None:
        # a broken pool's processes are already gone; waiting reaps them so none is left blocked
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._start()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def run(self, jobs: list[Job], in_flight: int, on_crash: Callable[[Job], object], ordered: bool = False) -> Iterator:
        """Results of ``fn(*args)`` for each job; at most ``in_flight`` pending at once.

        ``ordered``: yield in job order (scans, whose order the grouping relies on);
        otherwise in completion order (conversions, so memory is freed as soon as possible).
        After a crash every call that was in flight is a suspect and reruns alone; a
        suspect that crashes alone is the culprit and goes to ``on_crash``.
        """
        queue: deque[tuple[int, Job]] = deque(enumerate(jobs))
        suspects: deque[tuple[int, Job]] = deque()
        pending: dict[Future, tuple[int, Job, bool]] = {}
        ready: dict[int, object] = {}
        next_index = 0
        while queue or suspects or pending:
            broken = False
            try:
                if suspects:
                    if not pending:
                        index, job = suspects.popleft()
                        entry = (index, job, True)
                        pending[self._pool.submit(job[0], *job[1])] = entry
                else:
                    while queue and len(pending) < max(1, in_flight):
                        index, job = queue.popleft()
                        entry = (index, job, False)
                        pending[self._pool.submit(job[0], *job[1])] = entry
            except BrokenProcessPool:  # the pool broke between two submits
                suspects.append(entry[:2])
                broken = True
            done, _ = wait(pending, return_when=FIRST_COMPLETED) if pending and not broken else (set(), None)
            for future in done:
                index, job, alone = pending.pop(future)
                try:
                    ready[index] = future.result()
                except BrokenProcessPool:
                    broken = True
                    if alone:
                        ready[index] = on_crash(job)
                    else:
                        suspects.append((index, job))
            if broken:
                suspects.extend((index, job) for index, job, _ in pending.values())
                pending.clear()
                self._restart()
            if ordered:
                while next_index in ready:
                    yield ready.pop(next_index)
                    next_index += 1
            else:
                for index in list(ready):
                    yield ready.pop(index)
