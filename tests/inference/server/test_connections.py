"""Connection guards on a real server (issue 15, items 1 and 4): idle and slow-header sockets
never turn routes into 503, heads have a deadline, the connection cap evicts idle sockets,
an oversized head is a 431 the client reads."""

from __future__ import annotations

import contextlib
import select
import socket
import time

import httpx
import pytest

from tests.inference.server.conftest import AUTH


def _open_idle(port: int, n: int, partial: bool) -> list[socket.socket]:
    """``n`` connections that never finish a request head (``partial``: half a head sent)."""
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if partial:
            sock.sendall(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        socks.append(sock)
    return socks


def _close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


def _closed_by_server(sock: socket.socket, within_s: float) -> tuple[bool, bytes]:
    """Whether the server closes ``sock`` within ``within_s``, and what it sent first."""
    sock.settimeout(within_s)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        return False, data
    except ConnectionResetError:
        pass
    return True, data


@pytest.fixture(scope="module")
def guarded(server_factory):
    """Production limits but a 1 s head deadline and a cap of 16 connections."""
    running = server_factory({"settings": {"header_timeout_s": 1.0, "max_connections": 16}})
    assert running.wait_ready().status_code == 200
    return running


def test_seventy_idle_connections_leave_every_route_answering(server):
    # the defaults of medssl serve (uvicorn's limit_concurrency made this 503 before)
    socks = _open_idle(server.port, 40, partial=False) + _open_idle(server.port, 30, partial=True)
    try:
        time.sleep(0.2)
        for _ in range(5):
            start = time.perf_counter()
            assert httpx.get(server.url + "/ready", timeout=5).status_code == 200
            assert httpx.get(server.url + "/live", timeout=5).status_code == 200
            assert httpx.get(server.url + "/v1/models", headers=AUTH, timeout=5).status_code == 200
            assert time.perf_counter() - start < 1.0
    finally:
        _close_all(socks)


def test_connections_past_the_cap_evict_the_oldest_idle_ones(guarded):
    socks = _open_idle(guarded.port, 40, partial=True)  # 2.5 x the cap of 16
    try:
        for _ in range(10):
            assert httpx.get(guarded.url + "/ready", timeout=5).status_code == 200
        closed = sum(_closed_by_server(s, 0.05)[0] for s in socks[:20])
        assert closed == 20, "the oldest idle sockets are the ones let go"
    finally:
        _close_all(socks)


def test_a_head_trickled_byte_by_byte_is_408_at_the_head_deadline(guarded):
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=5) as sock:
        start = time.perf_counter()
        sock.sendall(b"GET /ready HTTP/1.1\r\n")
        for _ in range(20):  # one header byte every 0.2 s: each resets no timer
            if select.select([sock], [], [], 0.2)[0]:
                break  # the server answered
            sock.sendall(b"X")
        elapsed = time.perf_counter() - start
        closed, answer = _closed_by_server(sock, 3.0)
    assert closed and answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
    assert 0.9 < elapsed < 1.6


def test_an_idle_connection_is_closed_at_the_head_deadline(guarded):
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=5) as sock:
        start = time.perf_counter()
        closed, answer = _closed_by_server(sock, 3.0)
    assert closed and answer == b"" and 0.9 < time.perf_counter() - start < 2.0


def test_a_keep_alive_connection_serves_several_requests(guarded):
    with httpx.Client(base_url=guarded.url, timeout=5) as client:
        for _ in range(5):
            assert client.get("/ready").status_code == 200
            time.sleep(0.1)


def test_a_200_kb_head_is_431_not_a_dropped_connection(server):
    for _ in range(3):
        r = httpx.get(server.url + "/ready", headers={"X-Big": "a" * 200_000}, timeout=10)
        assert r.status_code == 431
        assert r.json()["error"] == "headers_too_large"
    assert httpx.get(server.url + "/ready", timeout=5).status_code == 200


def test_a_malformed_request_line_is_a_json_400(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"NOT AN HTTP REQUEST\r\n\r\n")
        _closed, answer = _closed_by_server(sock, 3.0)
    assert answer.startswith(b"HTTP/1.1 400") and b'"bad_request"' in answer
