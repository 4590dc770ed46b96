"""Real uvicorn servers in subprocesses, started per test module and stopped by their PID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class RunningServer:
    process: subprocess.Popen
    port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS for the server process")

    def wait_ready(self, timeout_s: float = 30.0, expect: int = 200) -> httpx.Response:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                r = httpx.get(f"{self.url}/ready", timeout=2)
                if r.status_code == expect or time.monotonic() > deadline:
                    return r
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_server(workdir: Path, config: dict, token: str | None = TOKEN) -> RunningServer:
    workdir.mkdir(parents=True, exist_ok=True)
    config = {**config, "settings": {"workdir": str(workdir), **config.get("settings", {})}}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MEDSSL_SERVE_TOKEN", None)
    if token:
        env["MEDSSL_SERVE_TOKEN"] = token
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.inference.server.server_process", json.dumps(config)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )
    line = process.stdout.readline()
    if not line.startswith("PORT "):
        process.kill()
        raise RuntimeError(f"server did not start (exit {process.poll()})")
    return RunningServer(process, int(line.split()[1]), workdir)


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory) -> Iterator:
    started: list[RunningServer] = []

    def start(config: dict | None = None, token: str | None = TOKEN) -> RunningServer:
        server = start_server(tmp_path_factory.mktemp("serve"), config or {}, token)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def server(server_factory) -> RunningServer:
    """A ready server with a 32 MiB body limit (default predictor, no delays)."""
    running = server_factory({"settings": {"max_upload_bytes": 32 << 20, "max_concurrent": 2, "max_files": 64}})
    assert running.wait_ready().status_code == 200
    return running
