"""Error answers of the HTTP service: ``{"error": code, "detail": reason}``, never a traceback.

:class:`ApiError` is raised anywhere below a route and turned into a JSON answer by the
app; :func:`send_error` answers from a pure ASGI middleware, before any framework code ran.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.responses import JSONResponse

Send = Callable[[dict[str, Any]], Awaitable[None]]


class ApiError(Exception):
    """An answer other than 2xx: HTTP ``status``, a stable ``code`` and a one-line ``detail``.

    ``close`` asks the server to drop the connection after answering (the request body
    may not have been read).
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail
        self.headers = dict(headers or {})
        if close:
            self.headers["connection"] = "close"


def error_body(code: str, detail: str) -> bytes:
    return json.dumps({"error": code, "detail": detail}).encode()


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse({"error": err.code, "detail": err.detail}, err.status, headers=err.headers)


async def send_error(send: Send, err: ApiError) -> None:
    """Answer ``err`` on a raw ASGI ``send`` (the response must not have started)."""
    body = error_body(err.code, err.detail)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.headers.items()),
    ]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
