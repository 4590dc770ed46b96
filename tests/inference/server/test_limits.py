"""Body size (413 before buffering), concurrency (503 at once) and deadlines (504) on a real server."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.inference.server.conftest import AUTH, TOKEN
from tests.inference.server.payloads import dicom_series, multipart_files

BOUNDARY = "medsslboundary"


def _read_status(sock: socket.socket, timeout_s: float = 5.0) -> tuple[int, bytes]:
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data


def _request_head(port: int, extra: str) -> bytes:
    return (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{extra}\r\n"
    ).encode()


def _part_head() -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.dcm"\r\n\r\n'
    ).encode()


def test_declared_3gb_upload_is_413_in_under_a_second_without_growing_memory(server):
    assert httpx.get(server.url + "/v1/models", headers=AUTH).status_code == 200  # warm
    before = server.rss_kib()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            start = time.perf_counter()
            sock.sendall(
                _request_head(server.port, "Content-Length: 3000000000\r\n")
                + _part_head()
                + b"\0" * (1 << 20)
            )
            status, head = _read_status(sock)
            elapsed = time.perf_counter() - start
        assert status == 413 and elapsed < 1.0
        assert b"connection: close" in head.lower()
    assert server.rss_kib() - before < 4096


def test_chunked_upload_past_the_limit_is_413_in_under_a_second(server):
    before = server.rss_kib()
    chunk = b"\0" * (1 << 20)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        start = time.perf_counter()
        sock.sendall(_request_head(server.port, "Transfer-Encoding: chunked\r\n"))
        sock.sendall(b"%x\r\n%s\r\n" % (len(_part_head()), _part_head()))
        status = None
        try:
            for _ in range(64):  # up to 64 MiB against a 32 MiB limit
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: read what it said
        status, _ = _read_status(sock)
        elapsed = time.perf_counter() - start
    assert status == 413 and elapsed < 1.0
    assert server.rss_kib() - before < 4096
    assert not any(server.workdir.iterdir()), "the partial upload must be deleted"
    assert httpx.get(server.url + "/ready").status_code == 200


def test_invalid_content_length_is_400(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(_request_head(server.port, "Content-Length: 10\r\nContent-Length: 12\r\n"))
        status, _ = _read_status(sock)
    assert status == 400


@pytest.fixture(scope="module")
def slow_server(server_factory):
    """One prediction at a time, none queued, 1.5 s deadline, a 2.5 s predictor."""
    config = {
        "settings": {"max_concurrent": 1, "max_queued": 0, "request_timeout_s": 1.5},
        "predictor": {"delay_s": 2.5},
    }
    running = server_factory(config)
    assert running.wait_ready().status_code == 200
    return running


def test_slow_prediction_is_504_and_cancelled_so_its_slot_frees_at_once(slow_server):
    # issue 15, item 2: the thread kept computing and holding the only slot after the 504
    files = multipart_files(dicom_series(2))
    start = time.perf_counter()
    first = httpx.post(slow_server.url + "/v1/predict", files=files, headers=AUTH, timeout=10)
    assert first.status_code == 504 and first.json()["error"] == "timeout"
    assert 1.4 < time.perf_counter() - start < 2.4
    time.sleep(0.3)  # the prediction stops at its next check, well before its 2.5 s
    metrics = httpx.get(slow_server.url + "/metrics", headers=AUTH).text
    assert "medssl_predictions_running 0.0" in metrics
    assert not any(slow_server.workdir.iterdir())
    second = httpx.post(slow_server.url + "/v1/predict", files=files, headers=AUTH, timeout=10)
    assert second.status_code == 504, "admitted and run, not 503 busy"
    assert httpx.get(slow_server.url + "/ready").status_code == 200
    time.sleep(0.3)


def test_second_request_while_one_runs_is_503_at_once(slow_server):
    import threading

    files = multipart_files(dicom_series(2))
    results = {}
    t = threading.Thread(
        target=lambda: results.setdefault(
            "a", httpx.post(slow_server.url + "/v1/predict", files=files, headers=AUTH, timeout=10)
        )
    )
    t.start()
    time.sleep(0.5)
    start = time.perf_counter()
    busy = httpx.post(slow_server.url + "/v1/predict", files=files, headers=AUTH, timeout=10)
    assert busy.status_code == 503 and time.perf_counter() - start < 0.5
    t.join()
    assert results["a"].status_code == 504
    time.sleep(1.5)
