"""One prediction request's private folder and the work done for it in a worker thread.

The folder (``0700``, under the configured workdir) holds ``in/`` (the upload) and ``out/``
(the predictor's files and the optional zip). It has two owners, the request handler and
the worker thread; it is deleted when both have let go, so a request that timed out never
pulls files away from a thread still reading them.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medssl.errors import IngestError
from medssl.inference.cancel import cancellable, check_cancelled
from medssl.inference.predictor import InputError, PredictionRequest, Predictor
from medssl.inference.server.memory import MemoryGuard, PeakRss
from medssl.inference.server.responses import ApiError
from medssl.inference.server.settings import StowTarget
from medssl.inference.server.stow import store_outputs
from medssl.inference.server.uploads import check_archive
from medssl.memory import MemoryBudgetError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class JobFolder:
    """A private temporary folder deleted after :meth:`release` was called ``owners`` times."""

    def __init__(self, parent: Path | None, owners: int = 2) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="medssl-serve-", dir=parent))
        self.inputs = self.root / "in"
        self.outputs = self.root / "out"
        self.inputs.mkdir()
        self.outputs.mkdir()
        self._owners = owners
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            self._owners -= 1
            last = self._owners == 0
        if last:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass(frozen=True)
class JobResult:
    summary: dict[str, Any]
    files: dict[str, Path]
    stow: dict[str, Any] | None = None
    archive: Path | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "summary": self.summary,
            "warnings": list(self.summary.get("warnings") or []),
            "outputs": {name: {"bytes": path.stat().st_size} for name, path in self.files.items()},
        }
        if self.stow is not None:
            body["stow"] = self.stow
        return body


def safe_name(name: str, index: int) -> str:
    """An output name fit for a zip entry and a file name: no folders, no odd characters."""
    cleaned = _UNSAFE.sub("_", Path(str(name)).name).lstrip(".")[:100]
    return cleaned or f"output-{index}"


def run_job(
    predictor: Predictor,
    folder: JobFolder,
    inputs: tuple[Path, ...],
    outputs: frozenset[str],
    *,
    max_files: int,
    want_archive: bool,
    stow: StowTarget | None,
    modality: str | None = None,
    memory: MemoryGuard | None = None,
    cancel: threading.Event | None = None,
    on_peak: Callable[[int], None] | None = None,
) -> JobResult:
    """Check the inputs, predict, gather the outputs into the folder, STOW and zip them.

    ``modality``: the input's modality as the client states it (``?modality=``).
    ``memory``: refuse a declared volume over one prediction's budget before reading it.
    ``cancel``: set when the request is given up; the prediction stops at its next check.
    ``on_peak(bytes)``: the process's peak resident memory while the job ran.

    Raises:
        ApiError: 422 for input the predictor (or the zip check) refuses (a modality the
            model was not trained on, with ``--strict-modality``, included), 413 for input
            that does not fit in memory.
        Cancelled: ``cancel`` was set (nobody waits for the answer any more).
    """
    rss = PeakRss()
    try:
        with rss, cancellable(cancel or threading.Event()):
            return _run(
                predictor, folder, inputs, outputs, max_files, want_archive, stow, modality, memory
            )
    finally:
        if on_peak is not None:
            on_peak(rss.peak)


def _run(
    predictor: Predictor,
    folder: JobFolder,
    inputs: tuple[Path, ...],
    outputs: frozenset[str],
    max_files: int,
    want_archive: bool,
    stow: StowTarget | None,
    modality: str | None,
    memory: MemoryGuard | None,
) -> JobResult:
    try:
        for path in inputs:
            check_archive(path, max_files)
        if memory is not None:
            memory.check(predictor, inputs, max_files)
            check_cancelled()
        request = PredictionRequest(
            inputs, outputs=outputs, output_dir=folder.outputs, modality=modality
        )
        prediction = predictor.predict(request)
    except (InputError, IngestError) as err:
        raise ApiError(422, "invalid_input", _message(err)) from None
    except MemoryBudgetError as err:  # one line naming sizes and the budget, no identifier
        raise ApiError(413, "too_large", str(err)) from None
    except MemoryError:
        raise ApiError(413, "too_large", "the input does not fit in memory") from None
    summary = json.loads(json.dumps(prediction.summary, allow_nan=False))  # a bug if not JSON
    files: dict[str, Path] = {}
    for index, (name, path) in enumerate(sorted(prediction.files.items())):
        clean = safe_name(name, index)
        target = folder.outputs / clean
        source = Path(path)
        if not source.is_file():
            raise RuntimeError(f"predictor output {clean!r} is not a file")
        if source.resolve() != target.resolve():
            shutil.move(str(source), target)  # gathered, so deleting the folder cleans up
        files[clean] = target
    report = None
    if stow is not None:
        report = store_outputs(stow, [p for n, p in files.items() if n.endswith(".dcm")])
    result = JobResult(summary, files, report)
    if want_archive:
        archive = folder.root / "prediction.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("prediction.json", json.dumps(result.body(), indent=1))
            for name, path in files.items():
                zf.write(path, name)
        result = JobResult(summary, files, report, archive)
    return result


def _message(err: Exception) -> str:
    return err.message if isinstance(err, IngestError) else str(err)
