"""Every log line, medssl's own and the libraries', passes one scrubber before it is written.

medssl's messages name inputs by pseudonyms, counts, keywords and tags, never by values
(docs/identifiers.md). Libraries do not promise that: pydicom warns ``Invalid value for VR
UI: '1.2.826...'`` once per file, quoting a source UID verbatim, both as a log record and as
a Python warning. So :func:`install` (run when ``medssl`` is imported, so spawned workers
get it too) makes

- every log record, whatever its logger, carry :func:`scrub`-bed text: DICOM UIDs become
  ``<uid>``; in records (and warnings) of the libraries that read image headers, quoted
  values become ``'<value>'``, too; tracebacks attached to a record are scrubbed as well;
- Python warnings go through logging (logger ``py.warnings``), hence through the scrubber;
- a library message repeated per file or slice (the same text once scrubbed) is logged once.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings

__all__ = ["install", "scrub"]

# A DICOM UID: digits in 5+ dot-separated components, or 4 when longer than an IPv4 address.
_UID = re.compile(
    r"(?<![\w.])\d+(?:\.\d+){4,}(?![\w.]*\d)|(?<![\w.])(?=[\d.]{16,})\d+(?:\.\d+){3}(?![\w.]*\d)"
)
# A quoted value in a library's message; a DICOM tag like '(0020,0052)' may stay.
_QUOTED = re.compile(
    r"""(?P<q>['"])(?!\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)(?P=q))[^'"\n]{1,512}(?P=q)"""
)
# Libraries that read image headers and may quote a value they read.
_HEADER_LIBRARIES = frozenset(
    {"pydicom", "highdicom", "nibabel", "nrrd", "dicomweb_client", "pylibjpeg", "pynetdicom", "PIL"}
)
_REPEAT_LOGGERS = ("pydicom", "py.warnings")  # libraries that repeat one message per file
_CATEGORY = re.compile(r"^\w*Warning: ")
_MAX_REMEMBERED = 4096
_lock = threading.Lock()


def scrub(text: str, *, quoted: bool = True) -> str:
    """``text`` without DICOM UIDs (``<uid>``) and, with ``quoted``, without quoted values."""
    if quoted:
        text = _QUOTED.sub(r"\g<q><value>\g<q>", text)
    return _UID.sub("<uid>", text)


def _scrub_traceback(text: str) -> str:
    """Frame lines (``File "path", line N``) keep their paths; everything else is scrubbed."""
    lines = text.splitlines()
    return "\n".join(scrub(line, quoted=not line.lstrip().startswith('File "')) for line in lines)


def _reads_headers(logger_name: str) -> bool:
    return logger_name.split(".")[0] in _HEADER_LIBRARIES


class _Once(logging.Filter):
    """Lets a message through the first time only (messages are already scrubbed)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = _CATEGORY.sub("", str(record.msg))  # pydicom logs and warns the same text
        with _lock:
            if key in self.seen:
                return False
            if len(self.seen) < _MAX_REMEMBERED:
                self.seen.add(key)
        return True


def _scrubbing_factory(previous):
    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the line
            message = str(record.msg)
        record.msg, record.args = scrub(message, quoted=_reads_headers(record.name)), None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = _scrub_traceback(logging.Formatter().formatException(record.exc_info))
        return record

    factory.medssl_scrubbing = True  # type: ignore[attr-defined]
    return factory


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning``: the warning as a ``py.warnings`` record, scrubbed."""
    path = str(filename).replace("\\", "/")
    quoted = any(f"/{library}/" in path for library in _HEADER_LIBRARIES)
    text = scrub(str(message), quoted=quoted)
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, text)


def install() -> None:
    """Scrub every log record and route warnings through logging (idempotent)."""
    previous = logging.getLogRecordFactory()
    if not getattr(previous, "medssl_scrubbing", False):
        logging.setLogRecordFactory(_scrubbing_factory(previous))
    warnings.showwarning = _log_warning
    once = _Once()
    for name in _REPEAT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Once) for f in logger.filters):
            logger.addFilter(once)
