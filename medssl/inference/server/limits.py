"""The service's limits: request body size, upload pace, concurrent uploads and predictions, time.

- :class:`BodyLimit` (pure ASGI middleware) answers 413 from ``Content-Length`` before a
  byte of the body is read, and counts streamed bytes of chunked bodies, stopping the
  request with 413 as soon as the count passes the limit: no framework ever buffers an
  oversize body.
- :class:`ConcurrencyGate` admits at most ``running + queued`` prediction requests (one
  more is 503 with ``Retry-After`` before the route reads its body) and lets at most
  ``running`` of them compute. A slot is freed when the worker thread really ends, so a
  prediction that timed out still counts until it stops: the load stays bounded.
- :class:`UploadSlots` caps uploads arriving at once; uploads hold no compute slot and no
  place in the prediction queue, so slow bodies cannot starve predictions (issue 15, item 3).
- :func:`paced` passes body chunks on while the upload keeps a minimum average rate after a
  grace period and the request deadline holds, else answers 408: a byte every 5 s no longer
  holds a slot for the whole request timeout.
- :func:`run_with_deadline` runs a job in a worker thread and answers 504 when the
  deadline passes first; it then sets the job's cancel event, so a cooperative job
  (:mod:`medssl.inference.cancel`) stops and frees its slot, and its result is discarded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from medssl.inference.server.responses import ApiError, send_error

log = logging.getLogger("medssl.serve")
T = TypeVar("T")
RETRY_AFTER_S = 2


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes", close=True)


class BodyLimit:
    """ASGI middleware: no HTTP request body above ``max_bytes`` reaches the app."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lengths = {v for k, v in scope["headers"] if k == b"content-length"}
        if lengths:
            value = lengths.pop()
            if lengths or not value.isdigit():
                await send_error(
                    send,
                    ApiError(
                        400,
                        "bad_request",
                        "Content-Length is not one non-negative integer",
                        close=True,
                    ),
                )
                return
            if int(value) > self.max_bytes:
                await send_error(send, too_large(self.max_bytes))
                return
        received = 0
        started = False

        async def counted_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large(self.max_bytes)
            return message

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except ApiError as err:  # the app let our 413 through unhandled
            if started:
                raise
            await send_error(send, err)


def busy(detail: str) -> ApiError:
    return ApiError(503, "busy", detail, headers={"retry-after": str(RETRY_AFTER_S)}, close=True)


class UploadSlots:
    """At most ``limit`` uploads arriving at once; one more is 503. Event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit, self.arriving = limit, 0

    def enter(self) -> None:
        if self.arriving >= self.limit:
            raise busy(f"{self.arriving} uploads arriving; retry later")
        self.arriving += 1

    def leave(self) -> None:
        self.arriving -= 1


async def paced(
    chunks: AsyncIterator[bytes], min_bytes_per_s: int, grace_s: float, deadline: float
) -> AsyncIterator[bytes]:
    """``chunks`` as they come, while ``received >= min_bytes_per_s * (elapsed - grace_s)``
    and the loop time is before ``deadline``; else 408 (the connection is then closed)."""
    loop = asyncio.get_running_loop()
    start, received = loop.time(), 0
    iterator = aiter(chunks)
    while True:
        limit = deadline
        if min_bytes_per_s > 0:  # the moment the average would fall below the rate
            limit = min(limit, start + grace_s + received / min_bytes_per_s)
        try:
            chunk = await asyncio.wait_for(anext(iterator), max(limit - loop.time(), 0.0))
        except StopAsyncIteration:
            return
        except TimeoutError:
            if limit < deadline:
                raise ApiError(
                    408,
                    "upload_too_slow",
                    f"upload slower than {min_bytes_per_s} bytes/s on average after "
                    f"{grace_s:g} s ({received} bytes in {loop.time() - start:.0f} s)",
                    close=True,
                ) from None
            raise ApiError(
                408,
                "request_timeout",
                "upload not complete before the request deadline",
                close=True,
            ) from None
        received += len(chunk)
        yield chunk


class ConcurrencyGate:
    """Admission then a compute slot; see the module docstring. Use from the event loop only."""

    def __init__(self, max_running: int, max_queued: int) -> None:
        if max_running < 1 or max_queued < 0:
            raise ValueError(
                f"need max_running >= 1 and max_queued >= 0, got {max_running}, {max_queued}"
            )
        self.capacity = max_running + max_queued
        self.admitted = 0
        self._slots = asyncio.Semaphore(max_running)

    def check_room(self) -> None:
        """Raise 503 (with ``Retry-After``) when running + queued predictions are full."""
        if self.admitted >= self.capacity:
            raise busy(f"{self.admitted} predictions running or waiting; retry later")

    def admit(self) -> None:
        """Count one more request in, or raise 503 (with ``Retry-After``) when full."""
        self.check_room()
        self.admitted += 1

    def leave(self) -> None:
        self.admitted -= 1

    async def take_slot(self, timeout_s: float) -> None:
        """Wait for a compute slot; 504 when none frees within ``timeout_s``."""
        if not self._slots.locked():
            await self._slots.acquire()  # free now: no wait, even at a zero timeout
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), max(timeout_s, 0.0))
        except TimeoutError:
            raise ApiError(
                504, "timeout", "no prediction slot freed before the request deadline"
            ) from None

    def free_slot(self) -> None:
        self._slots.release()


async def run_with_deadline(
    executor: Executor,
    fn: Callable[[], T],
    timeout_s: float,
    on_done: Callable[[Future], None],
    cancel: threading.Event | None = None,
) -> T:
    """``fn()`` in a worker thread; 504 after ``timeout_s``, and ``cancel`` is set. ``on_done(future)``
    runs on the event loop when the thread has really finished, whether or not anyone still waits."""
    loop = asyncio.get_running_loop()
    future = executor.submit(fn)

    def finished(f: Future) -> None:
        try:
            loop.call_soon_threadsafe(on_done, f)
        except RuntimeError:  # the loop is closed: the server is shutting down
            on_done(f)

    future.add_done_callback(finished)
    try:
        return await asyncio.wait_for(
            asyncio.shield(asyncio.wrap_future(future)), max(timeout_s, 0.0)
        )
    except TimeoutError:
        if cancel is not None:
            cancel.set()
        log.warning("prediction passed the %.1f s deadline: cancelled, result discarded", timeout_s)
        raise ApiError(
            504, "timeout", f"prediction did not finish within {timeout_s:.1f} s"
        ) from None
