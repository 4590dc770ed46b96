"""Bearer-token authentication as a pure ASGI middleware: checked before any body is read.

Every route except the probes (``/live``, ``/ready``) needs ``Authorization: Bearer
<token>``. A missing or malformed header is 401 (with ``WWW-Authenticate``); a wrong token
is 403. The comparison is constant-time (``hmac.compare_digest``), so response timing
tells nothing about how much of a guess was right.
"""

from __future__ import annotations

import hmac
from typing import Any

from medssl.inference.server.responses import ApiError, send_error

OPEN_PATHS = frozenset({"/live", "/ready"})


def token_matches(header: bytes | None, token: str) -> bool | None:
    """``None`` when ``header`` is no ``Bearer`` credential, else whether it carries ``token``."""
    if not header:
        return None
    scheme, _, credential = header.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not credential.strip():
        return None
    return hmac.compare_digest(credential.strip(), token.encode())


class BearerAuth:
    """ASGI middleware: refuse HTTP requests without the token (probes excepted)."""

    def __init__(self, app, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] != "http" or self.token is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        verdict = token_matches(header, self.token)
        if verdict:
            await self.app(scope, receive, send)
            return
        if verdict is None:
            err = ApiError(
                401,
                "unauthorized",
                "send 'Authorization: Bearer <token>'",
                headers={"www-authenticate": 'Bearer realm="medssl"'},
                close=True,
            )
        else:
            err = ApiError(403, "forbidden", "the bearer token is not valid", close=True)
        await send_error(send, err)
