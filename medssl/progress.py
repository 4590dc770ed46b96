"""Progress bars for long work (rich), silent when disabled or not wanted.

Bars describe work by counts only ("scanning 120/400 files"), never by file or patient
names, so they are safe to show on any screen and in any log.
"""

from __future__ import annotations

import sys

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as _RichProgress


class Progress:
    """``with Progress() as p: t = p.task("scanning", total=n); p.advance(t)``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar = (
            _RichProgress(
                TextColumn("{task.description:>11}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=not sys.stderr.isatty(),
            )
            if enabled
            else None
        )

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def task(self, description: str, total: int) -> int:
        return self._bar.add_task(description, total=total) if self._bar is not None else -1

    def advance(self, task: int, amount: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(task, amount)
