"""Read what is left of a request body before an early answer, so the answer arrives.

A server that answers before reading the whole body (a 401, a bad query, the 65th file of
a 64-file cap) and then closes leaves unread bytes in its socket; the kernel then resets
the connection instead of closing it, and the client may lose the answer it was sent
(``ECONNRESET`` while reading it). This is the "lingering close" problem of every HTTP
server. :class:`DrainBeforeAnswer` (pure ASGI middleware) reads and discards the rest of
a body up to ``max_bytes`` and ``timeout_s`` before the response starts. A body declared
larger than ``max_bytes`` is never read: that answer is a 413 and a dropped connection.
A 408 (an upload below the minimum pace) is sent at once, without draining.
"""

from __future__ import annotations

import asyncio
from typing import Any


class DrainBeforeAnswer:
    """ASGI middleware: the request body is consumed (bounded) before any answer starts."""

    def __init__(self, app, max_bytes: int, timeout_s: float = 5.0) -> None:
        if max_bytes < 0 or timeout_s <= 0:
            raise ValueError(f"need max_bytes >= 0 and timeout_s > 0, got {max_bytes}, {timeout_s}")
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        ended = False
        received = 0

        async def tracked_receive() -> dict[str, Any]:
            nonlocal ended, received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                ended = ended or not message.get("more_body", False)
            elif message["type"] == "http.disconnect":
                ended = True
            return message

        async def drain() -> None:
            if declared is not None and declared > self.max_bytes:
                return
            try:
                async with asyncio.timeout(self.timeout_s):
                    while not ended and received <= self.max_bytes:
                        await tracked_receive()
            except TimeoutError:
                pass

        async def draining_send(message: dict[str, Any]) -> None:
            # a 408 answers a body too slow to wait for: draining it would hold the slot again
            if message["type"] == "http.response.start" and not ended and message["status"] != 408:
                await drain()
            await send(message)

        await self.app(scope, tracked_receive, draining_send)


def _content_length(scope: dict[str, Any]) -> int | None:
    values = [v for k, v in scope["headers"] if k == b"content-length"]
    if len(values) == 1 and values[0].isdigit():
        return int(values[0])
    return None
