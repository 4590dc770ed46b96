"""Cooperative cancellation of a prediction nobody waits for any more.

A thread cannot be stopped from outside, so a prediction whose HTTP request passed its
deadline kept computing (and holding the only compute slot) for minutes (issue 15, item 2).
The server runs each job under :func:`cancellable` with an event it sets at the deadline;
the prediction calls :func:`check_cancelled` between its steps and between sliding-window
batches, which raises :class:`Cancelled` once the event is set, so the thread ends, its
memory is freed and the slot with it. Outside :func:`cancellable` the check does nothing
(``medssl predict`` runs to the end).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from medssl.errors import MedsslError

_local = threading.local()


class Cancelled(MedsslError):
    """The prediction was given up (its request timed out); nothing it made is used."""


@contextmanager
def cancellable(event: threading.Event) -> Iterator[None]:
    """Within the block, :func:`check_cancelled` in this thread raises once ``event`` is set."""
    previous = getattr(_local, "event", None)
    _local.event = event
    try:
        yield
    finally:
        _local.event = previous


def check_cancelled() -> None:
    """Raise :class:`Cancelled` when this thread's prediction was given up; else nothing."""
    event = getattr(_local, "event", None)
    if event is not None and event.is_set():
        raise Cancelled("prediction given up: its request passed the deadline")
