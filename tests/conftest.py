"""Fixtures shared by every test package; each lives in its own module and is registered here."""

from __future__ import annotations

from tests.orthanc import orthanc, orthanc_factory  # noqa: F401  (pytest fixtures)
