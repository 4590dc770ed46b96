"""Slow bodies do not starve predictions (issue 15, item 3): uploads hold no place in the
prediction queue, trickled bodies are 408 once they fall below the minimum pace, and the
number of uploads arriving at once has a cap of its own."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

import httpx
import pytest

from tests.inference.server.conftest import AUTH, TOKEN
from tests.inference.server.payloads import dicom_series, multipart_files


def _start_trickle(port: int, length: int = 100_000) -> socket.socket:
    """A predict request whose body will come a byte at a time (the head and one byte now)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        (
            f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
        ).encode()
        + b"\0"
    )
    return sock


def _trickle(socks: list[socket.socket], stop: threading.Event, every_s: float = 0.5) -> None:
    while not stop.wait(every_s):
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.sendall(b"\0")


def _answer(sock: socket.socket, within_s: float) -> bytes:
    """What the server answers within ``within_s`` (read until it closes)."""
    data, end = b"", time.monotonic() + within_s
    while select.select([sock], [], [], max(end - time.monotonic(), 0))[0]:
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture(scope="module")
def paced_server(server_factory):
    """Default work caps (1 running, 4 queued); a 16 KiB/s pace after a 1.5 s grace."""
    config = {
        "settings": {"min_upload_bytes_per_s": 16 << 10, "upload_grace_s": 1.5, "max_uploads": 8}
    }
    running = server_factory(config)
    assert running.wait_ready().status_code == 200
    return running


def test_five_trickled_uploads_neither_starve_predictions_nor_outlive_the_pace(paced_server):
    socks = [_start_trickle(paced_server.port) for _ in range(5)]
    stop = threading.Event()
    sender = threading.Thread(target=_trickle, args=(socks, stop), daemon=True)
    sender.start()
    try:
        files = multipart_files(dicom_series(2))
        time.sleep(0.3)  # every trickle is in
        for _ in range(3):  # each was a 503 for the whole request timeout before
            r = httpx.post(paced_server.url + "/v1/predict", files=files, headers=AUTH, timeout=10)
            assert r.status_code == 200, r.text
        assert httpx.get(paced_server.url + "/ready", timeout=5).status_code == 200
        start = time.perf_counter()
        answers = [_answer(sock, 4.0) for sock in socks]
        assert time.perf_counter() - start < 3.0
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 408") and b"upload_too_slow" in answer
    finally:
        stop.set()
        sender.join(5)
        for sock in socks:
            sock.close()


def test_uploads_past_their_cap_are_503_while_probes_answer(paced_server):
    socks = [_start_trickle(paced_server.port) for _ in range(8)]
    try:
        time.sleep(0.3)
        files = multipart_files(dicom_series(2))
        r = httpx.post(paced_server.url + "/v1/predict", files=files, headers=AUTH, timeout=10)
        assert r.status_code == 503 and r.json()["error"] == "busy"
        assert "uploads arriving" in r.json()["detail"]
        assert httpx.get(paced_server.url + "/ready", timeout=5).status_code == 200
        for sock in socks:  # the stalled uploads fall below the pace at the grace's end
            assert _answer(sock, 4.0).startswith(b"HTTP/1.1 408")
        r = httpx.post(paced_server.url + "/v1/predict", files=files, headers=AUTH, timeout=10)
        assert r.status_code == 200
        metrics = httpx.get(paced_server.url + "/metrics", headers=AUTH).text
        assert "medssl_uploads_arriving 0.0" in metrics
    finally:
        for sock in socks:
            sock.close()


def test_an_upload_at_a_steady_pace_past_the_grace_is_served(paced_server):
    files = multipart_files(dicom_series(2))
    request = httpx.Request("POST", paced_server.url + "/v1/predict", files=files, headers=AUTH)
    whole = request.read()
    chunks = [whole[i : i + 8192] for i in range(0, len(whole), 8192)]
    assert len(chunks) * 0.25 > 1.5  # the upload lasts longer than the grace

    def body():
        for chunk in chunks:  # ~32 KiB/s: above the 16 KiB/s floor
            time.sleep(0.25)
            yield chunk

    headers = {**AUTH, "content-type": request.headers["content-type"]}
    r = httpx.post(paced_server.url + "/v1/predict", content=body(), headers=headers, timeout=30)
    assert r.status_code == 200, r.text
