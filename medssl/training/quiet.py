"""The messages of Lightning and torch that a medssl user cannot act on, filtered in one place.

Each filter names the message and the module that emits it, so any other warning (a real
problem, or a new deprecation in medssl's own code) still shows. :func:`quiet_lightning` is
idempotent; the training CLI calls it before it builds anything.
"""

from __future__ import annotations

import logging
import warnings

# (message regex, emitting module regex, category): library internals calling library internals
WARNINGS: tuple[tuple[str, str, type[Warning]], ...] = (
    # torch deprecates LeafSpec; Lightning's CombinedLoader still builds one for every loader it sets up
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch\.utilities\._pytree", FutureWarning),
    # LightningCLI calls jsonargparse API that jsonargparse deprecated in v4
    (r"(?s).*(deprecated in v4|JsonargparseDeprecationWarning)", r"(lightning|jsonargparse)(\.|$)", DeprecationWarning),
)
# (logger name, start of the message): advertisements for Lightning's cloud products
LOG_LINES: tuple[tuple[str, str], ...] = (
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip:"),
    ("lightning.fabric.utilities.rank_zero", "💡 Tip:"),
)


class _DropLines(logging.Filter):
    """Drops the records whose message starts with one of ``starts``."""

    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_lightning() -> None:
    """Install the filters of :data:`WARNINGS` and :data:`LOG_LINES` (once per process)."""
    for message, module, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    by_logger: dict[str, tuple[str, ...]] = {}
    for name, start in LOG_LINES:
        by_logger[name] = (*by_logger.get(name, ()), start)
    for name, starts in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines(starts))
