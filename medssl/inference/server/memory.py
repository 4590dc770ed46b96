"""The server's memory budget per prediction, checked before an upload is read, and the peak
resident memory each prediction reached (``/metrics``).

A 265 KB upload declaring a legal 1024 x 1024 x 256 volume drove the server to 7.8 GiB
(issue 15, item 2). :meth:`MemoryGuard.check` reads what the upload declares
(:func:`medssl.inference.declared.declared_volume`: headers only), asks the predictor what
predicting that size takes (its ``memory_needed(declared)``, else
:func:`medssl.memory.prediction.prediction_peak` on the input grid), and refuses with 413
when that exceeds the share of the budget one prediction may use: the host budget of
:mod:`medssl.memory.budget` (``--memory-budget`` / ``MEDSSL_MEMORY_BUDGET_GB``, else what the
host has) less what the process held once the model was loaded, split between the
``max_concurrent`` predictions.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from medssl.inference.declared import DeclaredVolume, declared_volume
from medssl.inference.server.responses import ApiError
from medssl.memory import GIB, host_budget
from medssl.memory.budget import resident_bytes
from medssl.memory.prediction import prediction_peak

SAMPLE_S = 0.02


def needed_bytes(predictor: object, declared: DeclaredVolume) -> int:
    """What predicting ``declared`` takes: the predictor's own estimate where it has one."""
    estimate = getattr(predictor, "memory_needed", None)
    if callable(estimate):
        return int(estimate(declared))
    return prediction_peak(
        voxels=declared.voxels,
        itemsize=declared.itemsize,
        stored_bytes=declared.nbytes,
        model_voxels=declared.voxels,
    )


class MemoryGuard:
    """Refuses uploads whose declared volume would not fit one prediction's share."""

    def __init__(self, budget_gb: float | None, max_concurrent: int) -> None:
        self.budget_gb, self.share = budget_gb, max(int(max_concurrent), 1)
        self.baseline: int | None = None

    def settle(self) -> None:
        """Record what the process holds with the model loaded (called once it is ready)."""
        self.baseline = resident_bytes()

    def allowance(self) -> tuple[int, str]:
        """Bytes one prediction may use, and how that figure came about (for messages)."""
        budget = host_budget(self.budget_gb)
        held = self.baseline if self.baseline is not None else resident_bytes()
        share = max(budget.total - held, 0) // self.share
        how = f"memory budget {budget}, {held / GIB:.1f} GiB held by the loaded model"
        if self.share > 1:
            how += f", shared by {self.share} predictions"
        return share, how

    def check(self, predictor: object, inputs: Sequence[Path], max_files: int) -> None:
        """Raise 413 when the upload's declared volume needs more than one prediction's share."""
        declared = declared_volume(inputs, max_files)
        if declared is None:
            return  # no header declares a size: the readers refuse the files themselves
        need = needed_bytes(predictor, declared)
        allowed, how = self.allowance()
        if need > allowed:
            raise ApiError(
                413,
                "too_large",
                f"the upload declares a {declared.describe()} volume: predicting it needs "
                f"~{need / GIB:.1f} GiB, more than the {allowed / GIB:.1f} GiB one prediction may "
                f"use here ({how}); send a smaller volume or raise --memory-budget",
            )


class PeakRss:
    """The process's largest resident set while the block runs (sampled every 20 ms)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="medssl-rss", daemon=True)

    def __enter__(self) -> Self:
        self.peak = resident_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.peak = max(self.peak, resident_bytes())
