"""Worker functions for the worker-pool tests (importable by spawned children)."""

from __future__ import annotations

import os


def init(tag: str) -> None:
    os.environ["CRASHY_TAG"] = tag


def square_or_die(value: int) -> tuple[int, int, str]:
    """Dies hard (as a segfaulting decoder would) on negative input."""
    if value < 0:
        os._exit(1)
    return value, value * value, os.environ.get("CRASHY_TAG", "")
