"""The one error family of medssl.

Every message must be safe to print: it names the input by an opaque reference and the
reason by facts about the data (counts, spacings, tag keywords), never by identifiers.
"""

from __future__ import annotations

from medssl.types import RejectReason


class MedsslError(Exception):
    """Base of every error medssl raises on purpose."""


class IngestError(MedsslError):
    """An input that ingest refuses; recorded in ``rejected`` with ``code``."""

    def __init__(self, code: RejectReason, message: str) -> None:
        super().__init__(message)
        self.code = RejectReason(code)
        self.message = message

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.code, self.message))


class ConfigError(MedsslError):
    """A command-line or configuration value that cannot work."""
