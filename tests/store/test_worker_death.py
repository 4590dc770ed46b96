"""Spec (issue 15, item 9): ``kill -9`` of ``medssl ingest --workers 2`` leaves no process behind.

Before: the two spawn workers and multiprocessing's resource tracker kept running under
PID 1 (checked for 80 s). Now each worker dies with its parent (the kernel's death signal,
a watchdog thread where there is none), and the tracker, whose pipe the workers held
open, follows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medssl.store import workers as worker_module
from tests.store import dicom_factory as f

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _children(pid: int) -> set[int]:
    found = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found |= {int(c) for c in text.split()}
    except OSError:
        pass
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("death") / "src"
    for i in range(40):
        f.write_series(root / f"series{i:02d}", 4, template=f.CT)
    return root


def test_kill_9_of_ingest_takes_its_workers_and_tracker_along(source, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "medssl.cli",
        "ingest",
        str(source),
        "--out",
        str(tmp_path / "store"),
        "--key-file",
        str(tmp_path / "key"),
        "--workers",
        "2",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        # two workers and the resource tracker: three children, once the pool has started
        assert _wait_for(lambda: len(_children(proc.pid)) >= 3 or proc.poll() is not None, 60)
        children = _children(proc.pid)
        assert proc.poll() is None and len(children) >= 3, (
            "the run ended before it could be killed: make the source larger"
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert _wait_for(lambda: not any(_alive(c) for c in children), 5), [
            c for c in children if _alive(c)
        ]
    finally:
        try:
            os.killpg(
                proc.pid, signal.SIGKILL
            )  # whatever is left, so a failure leaves nothing running
        except ProcessLookupError:
            pass


def test_the_watchdog_ends_a_worker_whose_parent_is_gone(tmp_path):
    """Where no death signal exists: the polling thread alone ends an orphan."""
    code = (
        "import os, sys, time\n"
        "from medssl.store import workers\n"
        "workers.WATCHDOG_SECONDS = 0.05\n"
        "workers.sys.platform = 'other'\n"  # no prctl: the watchdog alone
        "parent = os.getppid()\n"
        "workers.bind_to_parent(parent)\n"
        "print('bound', flush=True)\n"
        "time.sleep(60)\n"
    )
    # the parent is a shell that starts the child and is then killed
    shell = subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" -c "$0" & echo $!; wait', code],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        child = int(shell.stdout.readline())
        assert _wait_for(lambda: _alive(child), 10)
        time.sleep(1.5)  # the child has imported and bound itself
        assert _alive(child)
        os.kill(shell.pid, signal.SIGKILL)
        shell.wait(timeout=10)
        assert _wait_for(lambda: not _alive(child), 5)
    finally:
        try:
            os.killpg(shell.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_worker_started_after_its_parent_died_exits_at_once(monkeypatch):
    exits = []
    monkeypatch.setattr(
        worker_module.os,
        "_exit",
        lambda code: exits.append(code) or (_ for _ in ()).throw(SystemExit(code)),
    )
    with pytest.raises(SystemExit):
        worker_module.bind_to_parent(os.getppid() + 1_000_000)
    assert exits == [1]
