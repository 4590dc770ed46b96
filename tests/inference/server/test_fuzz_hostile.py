"""Spec (issue 15, slow): over 1,000 fuzzed and hostile requests on one real server - seeded
mutants of real files (``tests.store.fuzz_mutator``), the broken-upload corpus, oversized
heads, heads and bodies trickled past their deadlines, declared-size bombs - get no 5xx; the
server stays ready, keeps no request folder and counts no 5xx in ``/metrics``.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.inference.server.conftest import AUTH, TOKEN
from tests.inference.server.fuzz_corpus import cases
from tests.inference.server.payloads import dicom_series
from tests.inference.server.test_bombs import declared_nifti_gz, many_frames_dicom
from tests.store import fuzz_mutator as fm

MUTANTS = 800
SETTINGS = {"max_upload_bytes": 32 << 20, "max_concurrent": 2, "max_files": 64, "memory_budget_gb": 1.0,
            "header_timeout_s": 1.0, "min_upload_bytes_per_s": 16 << 10, "upload_grace_s": 1.0}


def _raw_exchange(port: int, head: bytes, trickle: bytes = b"", every_s: float = 0.3, within_s: float = 6.0) -> bytes:
    """Send ``head``, then ``trickle`` a byte every ``every_s``; what the server answers before it closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=within_s)
    answer, end = b"", time.monotonic() + within_s
    try:
        sock.sendall(head)
        sock.setblocking(False)
        for byte in trickle:
            if time.monotonic() > end:
                break
            with contextlib.suppress(BlockingIOError):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            with contextlib.suppress(OSError):
                sock.sendall(bytes([byte]))
            time.sleep(every_s)
        sock.setblocking(True)
        sock.settimeout(max(end - time.monotonic(), 0.1))
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    finally:
        sock.close()
    return answer


def _status(answer: bytes) -> int:
    """The status of a raw HTTP answer; 0 when the server closed without one."""
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


@pytest.fixture(scope="module")
def hostile_server(server_factory):
    running = server_factory({"settings": SETTINGS})
    assert running.wait_ready().status_code == 200
    return running


@pytest.mark.slow
def test_a_thousand_fuzzed_and_hostile_requests_get_no_5xx(hostile_server, tmp_path):
    server, statuses, wrong = hostile_server, collections.Counter(), []

    def seen(name: str, status: int) -> None:
        statuses[status] += 1
        if status >= 500:
            wrong.append((name, status))

    seeds = fm.load_seeds(tmp_path / "seeds")
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        for m in fm.make_mutants(seeds, 0, MUTANTS, seed=2015):
            seen(f"mutant {m.name} {m.seed} {m.kind}", client.post("/v1/predict", files={"file": ("upload", m.data)}).status_code)
        for name, kwargs in cases(seed=11):
            seen(name, client.post("/v1/predict", **kwargs).status_code)
        for n in range(20):  # oversized heads: 431
            seen(f"head of {64 + n * 16} KiB", client.get("/ready", headers={"X-Big": "a" * ((64 + n * 16) << 10)}).status_code)
        series = dicom_series(1)[0]
        for name, blob in [("1024x1024x256 declared", declared_nifti_gz((1024, 1024, 256))), ("vox_offset 1e9", declared_nifti_gz((8, 8, 8), vox_offset=10**9)),
                           ("4000 frames of 2048^2", many_frames_dicom())] * 4:
            seen(f"bomb {name}", client.post("/v1/predict", files={"file": ("f", blob)}).status_code)
        for length in (10**12, 40 << 20, 2**63 - 1):  # a declared body past the limit, never sent
            head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                    f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n").encode()
            seen(f"declared {length} bytes", _status(_raw_exchange(server.port, head + series[:100], within_s=4)))
    slow_head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n"
    for n in range(4):  # heads trickled past the 1 s head deadline: 408 or closed
        seen(f"slow head {n}", _status(_raw_exchange(server.port, slow_head, trickle=b"X-Slow: " + b"a" * 40)))
    body_head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                 "Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n").encode()
    for n in range(4):  # bodies trickled below 16 KiB/s after the 1 s grace: 408 or closed
        seen(f"slow body {n}", _status(_raw_exchange(server.port, body_head, trickle=series[:40])))
    total = sum(statuses.values())
    print(f"hostile requests: {total}, statuses {dict(sorted(statuses.items()))}")
    assert total >= 1000 and wrong == [], wrong[:20]
    assert statuses[431] >= 20 and statuses[408] + statuses[0] >= 8
    assert httpx.get(server.url + "/ready", timeout=5).status_code == 200
    assert not any(server.workdir.iterdir()), "every request's folder is deleted"
    assert 'status="5' not in httpx.get(server.url + "/metrics", headers=AUTH).text
    assert not Path("/tmp/medssl-pwned").exists()
