"""Connection-level guards of the HTTP service, in the uvicorn protocol that serves it.

uvicorn's ``limit_concurrency`` counts *open connections* as well as requests, and h11
arms no timer until a first answer: 70 sockets that never finish their headers made every
route, ``/ready`` included, answer 503 for as long as they stayed open (issue 15, item 1).
:func:`uvicorn_config` therefore leaves ``limit_concurrency`` off (the work caps live in the
app: :mod:`~medssl.inference.server.limits`) and serves HTTP with :class:`GuardedH11Protocol`:

- a **head deadline**: a connection must deliver a whole request line and headers within
  ``header_timeout_s`` of opening or of its previous answer (trickled bytes do not reset
  it), else it is closed, with a 408 when it had sent part of a head;
- a **connection cap** of its own: one connection over ``max_connections`` evicts the
  oldest connection still waiting for a head (idle keep-alive sockets and slow-header
  attackers), and is closed only when every connection is busy with a request;
- **431** for a request head over ``max_request_head_bytes`` (h11 refuses it; uvicorn
  answered 400 and reset the socket, so clients saw a dropped connection): the answer is
  followed by a lingering close that reads and discards what the client still sends.
"""

from __future__ import annotations

import asyncio
import http
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from medssl.inference.server.responses import error_body
from medssl.inference.server.settings import ServerSettings

log = logging.getLogger("medssl.serve")
LINGER_S = 2.0  # after an error answer: how long unread request bytes are drained
LINGER_BYTES = 4 << 20


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the guards of the module docstring; see :func:`guarded_protocol`."""

    settings: ServerSettings  # set on the subclass guarded_protocol() makes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._head_since = self.loop.time()
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger_bytes: int | None = None  # not None: answered an error, draining
        self._arm_head_deadline()
        if len(self.connections) > self.settings.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._linger_bytes is not None:
            self._linger_bytes += len(data)
            if self._linger_bytes > LINGER_BYTES:
                self.transport.close()
            return
        if self.waiting_for_head():
            self._head_bytes += len(data)
            if self._head_length(data) > self.settings.max_request_head_bytes:
                self._head_too_large()  # h11 bounds only a head that arrives in parts
                return
        super().data_received(data)

    def _head_length(self, data: bytes) -> int:
        """Length of the head so far: unparsed bytes h11 holds plus ``data``, up to the blank line."""
        pending = self.conn.trailing_data[0] + data
        end = pending.find(b"\r\n\r\n")
        return end + 4 if end >= 0 else len(pending)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._head_bytes, self._head_since = 0, self.loop.time()
            self._arm_head_deadline()

    def waiting_for_head(self) -> bool:
        """No request of this connection is being handled: its next head has not arrived."""
        return self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE

    # --- head deadline -------------------------------------------------------------------
    def _arm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(
            self.settings.header_timeout_s, self._head_deadline_passed
        )

    def _head_deadline_passed(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self.waiting_for_head():
            return
        if self._head_bytes:
            self._answer_and_linger(
                408,
                "request_timeout",
                f"request head not complete within {self.settings.header_timeout_s:g} s",
            )
        else:
            self.transport.close()  # an idle socket: nothing to answer

    # --- connection cap --------------------------------------------------------------------
    def _make_room(self) -> None:
        waiting = [
            c
            for c in self.connections
            if c is not self
            and isinstance(c, GuardedH11Protocol)
            and c.waiting_for_head()
            and not c.transport.is_closing()
        ]
        if waiting:
            min(waiting, key=lambda c: c._head_since).transport.close()
            return
        log.warning(
            "connection cap %d reached with every connection busy: refused one",
            self.settings.max_connections,
        )
        self.transport.close()

    # --- error answers ---------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        """h11 refused the request head (uvicorn's hook): 431 when it was too long, else 400."""
        if self._head_bytes > self.settings.max_request_head_bytes:
            self._head_too_large()
        else:
            self._answer_and_linger(400, "bad_request", "malformed HTTP request")

    def _head_too_large(self) -> None:
        limit = self.settings.max_request_head_bytes
        self._answer_and_linger(431, "headers_too_large", f"request line and headers exceed {limit} bytes")

    def _answer_and_linger(self, status: int, code: str, detail: str) -> None:
        """Answer, half-close, then read and discard what the client still sends (bounded),
        so the kernel does not reset the socket before the client reads the answer."""
        body = error_body(code, detail)
        reason = http.HTTPStatus(status).phrase
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        # written as bytes: h11 will not answer a request it has not parsed (a partial head)
        self.transport.write(head.encode("ascii") + body)
        self._linger_bytes = 0
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.transport.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)


def guarded_protocol(settings: ServerSettings) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` subclass bound to ``settings`` (uvicorn builds one per
    connection from the class alone)."""
    return type("BoundGuardedH11Protocol", (GuardedH11Protocol,), {"settings": settings})


def uvicorn_config(
    app: Any,
    settings: ServerSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> uvicorn.Config:
    """How ``medssl serve`` (and the tests' real server) runs ``app`` under uvicorn."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=guarded_protocol(settings),
        ws="none",
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type] - a float works
        limit_concurrency=None,  # counts idle connections: the caps are above and in the app
        h11_max_incomplete_event_size=settings.max_request_head_bytes,
        backlog=max(2048, 2 * settings.max_connections),
    )
