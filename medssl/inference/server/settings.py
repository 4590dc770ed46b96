"""The HTTP service's settings: one frozen dataclass, filled from CLI flags and the environment.

Secrets (the API token, STOW-RS credentials) come from the environment or a file, never
from a command line where ``ps`` would show them, and never appear in ``repr``.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medssl.errors import ConfigError

TOKEN_ENV = "MEDSSL_SERVE_TOKEN"
TOKEN_FILE_ENV = "MEDSSL_SERVE_TOKEN_FILE"
STOW_URL_ENV = "MEDSSL_STOW_URL"
STOW_TOKEN_ENV = "MEDSSL_STOW_TOKEN"
STOW_USER_ENV = "MEDSSL_STOW_USER"
STOW_PASSWORD_ENV = "MEDSSL_STOW_PASSWORD"
MIN_TOKEN_CHARS = 16

log = logging.getLogger("medssl.serve")


@dataclass(frozen=True)
class StowTarget:
    """Where DICOM outputs are stored (STOW-RS) and how to authenticate there."""

    url: str
    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0


@dataclass(frozen=True)
class ServerSettings:
    """Limits and secrets of one server.

    Attributes:
        token: the bearer token every route but ``/live`` and ``/ready`` requires;
            ``None`` turns authentication off (allowed only on loopback by the CLI).
        max_upload_bytes: a request body above this is answered 413 before it is read.
        request_timeout_s: upload + wait + prediction; a prediction still running then is
            answered 504 (its thread finishes in the background, its result is dropped).
        max_concurrent: predictions running at once (threads).
        max_queued: admitted requests beyond those running (uploading or waiting for a
            slot); one more is answered 503 with ``Retry-After`` at once.
        max_files: files in one upload; max_header_bytes: one multipart part's headers.
        workdir: parent of the private per-request folders (the system temp dir if None).
        stow: optional STOW-RS target for DICOM outputs.
        api_docs: serve ``/openapi.json`` and ``/docs`` (behind the token, like every route
            but the probes); ``False`` leaves them out (404).
        header_timeout_s: a connection must deliver a whole request head this soon after it
            opens or after its previous answer, else it is closed (408 if it sent part of one).
        keep_alive_s: an idle keep-alive connection is closed after this long.
        max_connections: open connections; one more evicts the oldest connection still
            waiting for a request head (idle ones first in line), else it is closed at once.
            Separate from the work caps, so idle sockets never turn routes into 503.
        max_request_head_bytes: request line and headers; more is answered 431.
        max_uploads: uploads arriving at once (they hold no compute slot); one more is 503.
        min_upload_bytes_per_s, upload_grace_s: after the grace period an upload must have
            averaged this rate, else it is answered 408 and its connection closed.
        memory_budget_gb: memory a prediction may reach, shared by ``max_concurrent``
            predictions (``None``: ``MEDSSL_MEMORY_BUDGET_GB``, else what the host has);
            an upload whose declared volume would need more is answered 413 before reading.
    """

    token: str | None = field(default=None, repr=False)
    max_upload_bytes: int = 2 << 30
    request_timeout_s: float = 300.0
    max_concurrent: int = 1
    max_queued: int = 4
    max_files: int = 4096
    max_header_bytes: int = 16 << 10
    workdir: Path | None = None
    stow: StowTarget | None = None
    api_docs: bool = True
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_connections: int = 200
    max_request_head_bytes: int = 64 << 10
    max_uploads: int = 8
    min_upload_bytes_per_s: int = 32 << 10
    upload_grace_s: float = 10.0
    memory_budget_gb: float | None = None

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"API token has {len(self.token)} characters; use at least {MIN_TOKEN_CHARS}"
            )
        positive = (
            "max_upload_bytes",
            "max_concurrent",
            "max_files",
            "max_header_bytes",
            "max_connections",
            "max_request_head_bytes",
            "max_uploads",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_queued < 0:
            raise ConfigError(f"max_queued must be 0 or more, got {self.max_queued}")
        for name in ("request_timeout_s", "header_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.min_upload_bytes_per_s < 0 or self.upload_grace_s < 0:
            raise ConfigError("min_upload_bytes_per_s and upload_grace_s must be 0 or more")
        if self.memory_budget_gb is not None and not self.memory_budget_gb > 0:
            raise ConfigError(f"memory_budget_gb must be positive, got {self.memory_budget_gb}")


def read_token(env: Mapping[str, str], token_file: str | Path | None = None) -> str | None:
    """The API token: ``token_file`` (or ``$MEDSSL_SERVE_TOKEN_FILE``), else ``$MEDSSL_SERVE_TOKEN``."""
    path = token_file or env.get(TOKEN_FILE_ENV) or None
    if path is not None:
        path = Path(path).expanduser()
        try:
            mode = path.stat().st_mode
            token = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"token file unreadable ({type(exc).__name__})") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the token file is readable by other users; chmod 600 it")
        if not token:
            raise ConfigError("token file is empty")
        return token
    return env.get(TOKEN_ENV) or None


def read_stow_target(env: Mapping[str, str], url: str | None = None) -> StowTarget | None:
    """The STOW-RS target from ``url`` or ``$MEDSSL_STOW_URL``, credentials from the environment."""
    url = url or env.get(STOW_URL_ENV) or None
    if url is None:
        return None
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"STOW-RS URL must start with http:// or https://, got scheme {url.split(':')[0]!r}"
        )
    token, user = env.get(STOW_TOKEN_ENV) or None, env.get(STOW_USER_ENV) or None
    password = env.get(STOW_PASSWORD_ENV)
    if token and user:
        raise ConfigError(
            f"set either {STOW_TOKEN_ENV} or {STOW_USER_ENV}/{STOW_PASSWORD_ENV}, not both"
        )
    if user and password is None:
        raise ConfigError(f"{STOW_USER_ENV} is set but {STOW_PASSWORD_ENV} is not")
    return StowTarget(url.rstrip("/"), token=token, user=user, password=password)


def settings_from_env(env: Mapping[str, str] | None = None, **overrides) -> ServerSettings:
    """Settings with the token and STOW target read from ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    values = {"token": read_token(env), "stow": read_stow_target(env)}
    values.update(overrides)
    return ServerSettings(**values)
