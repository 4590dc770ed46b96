"""What pixel decoders print while they fail, taken off stderr and into the refusal's reason.

pydicom logs every failing decoding plugin with ``LOGGER.exception`` (a traceback on
stderr through logging's last-resort handler), and pylibjpeg-rle's Rust code writes a
panic message, with a backtrace where ``RUST_BACKTRACE`` is set, straight to file
descriptor 2 before Python sees a ``PanicException``. During a decode both are captured:
pydicom's records by a handler on its logger, the descriptor by pointing it at a private
file; afterwards anything else that landed there (another thread's output) goes back to
stderr, and :attr:`DecoderOutput.summary` gives one short line for the rejected row.

The line holds the decoder's own words (index and length figures, plugin names) cut to
:data:`MAX_SUMMARY` characters, with anything shaped like a UID replaced: decoders see
pixel bytes and image dimensions, never names or text elements.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

MAX_SUMMARY = 160
_PANIC = re.compile(
    r"^thread '.*' panicked at (?P<where>[^\n]*?):?\n(?P<what>[^\n]*)", re.MULTILINE
)
_UID_LIKE = re.compile(r"\d+(?:\.\d+){3,}")
_LOGGERS = ("pydicom",)
_lock = threading.Lock()  # one capture of the process-wide descriptor at a time
_scratch: list = []  # the process's capture file, made once


@dataclass
class DecoderOutput:
    """What was printed during one decode: pydicom's failure records and a panic, if any."""

    records: list[str] = field(default_factory=list)
    panic: str | None = None

    @property
    def summary(self) -> str:
        """One short line: the panic first (it is why the decode stopped), then the first failure."""
        parts = []
        if self.panic:
            parts.append(f"decoder panicked: {self.panic}")
        parts.extend(self.records[:1])
        return _clean("; ".join(parts))


class _Collect(logging.Handler):
    def __init__(self, out: DecoderOutput) -> None:
        super().__init__(logging.DEBUG)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            kind = (
                record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else "error"
            )
            self.out.records.append(
                f"{kind}: {record.getMessage().splitlines()[0] if record.getMessage() else ''}"
            )


@contextmanager
def captured_decoder_output() -> Iterator[DecoderOutput]:
    """Run a decode with its tracebacks and panics kept off stderr (see the module docstring)."""
    out = DecoderOutput()
    handler = _Collect(out)
    captured = ""
    try:
        with _lock:
            loggers = [logging.getLogger(name) for name in _LOGGERS]
            saved_propagate = [lg.propagate for lg in loggers]
            for lg in loggers:
                lg.addHandler(handler)
                lg.propagate = False
            scratch, saved_fd = _redirect_stderr()
            try:
                yield out
            finally:
                captured = _restore_stderr(scratch, saved_fd)
                for lg, propagate in zip(loggers, saved_propagate):
                    lg.removeHandler(handler)
                    lg.propagate = propagate
    finally:  # also when the decode raised: the caller reads ``out`` in its except clause
        out.panic, rest = _split_panic(captured)
        if rest.strip():  # not the decoder's: whoever wrote it still gets it on stderr
            sys.stderr.write(rest)
            sys.stderr.flush()


def _redirect_stderr():
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    try:
        if not _scratch:
            _scratch.append(tempfile.TemporaryFile(prefix="medssl-decoder-"))  # noqa: SIM115 - kept for the process's life
        scratch = _scratch[0]
        scratch.seek(0)
        scratch.truncate()
        saved = os.dup(2)
        os.dup2(scratch.fileno(), 2)
        return scratch, saved
    except OSError:  # no descriptor 2 to point elsewhere (a daemon): nothing to capture
        return None, None


def _restore_stderr(scratch, saved_fd) -> str:
    if scratch is None:
        return ""
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(saved_fd, 2)
    os.close(saved_fd)
    scratch.seek(0)
    return scratch.read(1 << 16).decode("utf-8", "replace")


def _split_panic(text: str) -> tuple[str | None, str]:
    """The panic's message (one line) and the text before it; the backtrace is dropped."""
    match = _PANIC.search(text)
    if match is None:
        return None, text
    return match.group("what").strip(), text[: match.start()]


def _clean(text: str) -> str:
    text = _UID_LIKE.sub("<uid>", "".join(c if c.isprintable() else " " for c in text))
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= MAX_SUMMARY else text[: MAX_SUMMARY - 3] + "..."
