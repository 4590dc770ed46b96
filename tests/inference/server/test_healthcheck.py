"""The docker-compose healthcheck of medssl-serve passes while the server is under the
slow-header and bomb attacks of issue 15 (the command is read from docker-compose.yml and
run as the container runs it, against a real server on loopback)."""

from __future__ import annotations

import subprocess
import sys
import threading

import httpx
import pytest
import yaml

from tests.inference.server.conftest import AUTH, ROOT
from tests.inference.server.test_bombs import declared_nifti_gz
from tests.inference.server.test_connections import _close_all, _open_idle


def healthcheck_command(port: int) -> list[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    test = compose["services"]["medssl-serve"]["healthcheck"]["test"]
    assert test[0] == "CMD" and "/ready" in test[-1]
    command = [sys.executable if arg == "python3" else arg for arg in test[1:]]
    return [arg.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for arg in command]


def passes(command: list[str]) -> bool:
    return subprocess.run(command, check=False, timeout=10, capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def attacked(server_factory):
    """Default limits (200 connections), a 1 GiB memory budget."""
    running = server_factory({"settings": {"memory_budget_gb": 1.0}})
    assert running.wait_ready().status_code == 200
    return running


def test_the_healthcheck_passes_under_300_idle_connections(attacked):
    socks = _open_idle(attacked.port, 150, partial=False)
    socks += _open_idle(attacked.port, 150, partial=True)  # 1.5 x the connection cap
    try:
        command = healthcheck_command(attacked.port)
        assert all(passes(command) for _ in range(3))
    finally:
        _close_all(socks)


def test_the_healthcheck_passes_while_bombs_are_posted(attacked):
    bomb = declared_nifti_gz((1024, 1024, 256))
    answers: list[int] = []

    def attack() -> None:
        for _ in range(3):
            files = [("file", ("x.nii.gz", bomb, "application/gzip"))]
            r = httpx.post(attacked.url + "/v1/predict", files=files, headers=AUTH, timeout=30)
            answers.append(r.status_code)

    attacker = threading.Thread(target=attack)
    attacker.start()
    try:
        assert all(passes(healthcheck_command(attacked.port)) for _ in range(3))
    finally:
        attacker.join(60)
    assert answers == [413, 413, 413]
