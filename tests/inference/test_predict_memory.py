"""``medssl predict`` fits its sliding-window batch to memory (issue 14): the windows per pass
shrink when ``--sw-batch-size`` would not fit the budget, and a volume that does not fit even
one window at a time is refused in one line before the sliding window allocates."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medssl.inference.predict import ArtifactPredictor
from medssl.inference.predictor import PredictionRequest
from medssl.memory import BUDGET_ENV, GIB, MemoryBudgetError
from medssl.memory.budget import resident_bytes
from medssl.memory.sliding import SlidingWindowCost, fit_window_batch, sliding_window_cost
from tests.inference.artifact_builders import segmentation_artifact, write_lps_nifti

VOLUME = (48, 48, 32)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return ArtifactPredictor(segmentation_artifact(tmp_path_factory.mktemp("memory") / "artifact"), device="cpu", sw_batch_size=8)


def test_the_cost_grows_with_the_volume_the_classes_and_the_window_batch():
    small = sliding_window_cost((64, 64, 64), (32, 32, 32), 3, 10 << 20)
    assert sliding_window_cost((128, 64, 64), (32, 32, 32), 3, 10 << 20).fixed > small.fixed
    assert sliding_window_cost((64, 64, 64), (32, 32, 32), 14, 10 << 20).fixed > small.fixed
    assert small.total(4) - small.total(2) == 2 * small.per_window
    assert small.fixed >= 64**3 * 4 * (2 + 3)  # image, coverage and the 3-class accumulator


def test_the_window_batch_is_the_largest_that_fits():
    cost = SlidingWindowCost(fixed=100, per_window=10)
    assert fit_window_batch(cost, 8, 10_000) == 8
    assert fit_window_batch(cost, 8, 135) == 3
    assert fit_window_batch(cost, 8, 105) == 0


def test_with_memory_to_spare_the_requested_batch_stands(predictor, monkeypatch):
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    assert predictor.window_batch("seg", VOLUME) == 8


def test_a_tight_budget_shrinks_the_window_batch_and_says_so(predictor, monkeypatch, caplog):
    predictor.window_batch("seg", VOLUME)  # traced once
    cost = sliding_window_cost(VOLUME, predictor.window, 3, predictor._window_peak["seg"])
    budget = resident_bytes() + cost.total(2) + cost.per_window // 2 + (8 << 20)  # 2 windows fit, with the allocator's slack
    monkeypatch.setenv(BUDGET_ENV, str(budget / GIB))
    with caplog.at_level(logging.WARNING, logger="medssl.predict"):
        batch = predictor.window_batch("seg", VOLUME)
    assert 1 <= batch < 8
    assert any("instead of --sw-batch-size 8" in r.getMessage() for r in caplog.records)


def test_a_volume_that_fits_no_window_is_refused_in_one_line(predictor, monkeypatch, tmp_path):
    monkeypatch.setenv(BUDGET_ENV, str((resident_bytes() + (1 << 20)) / GIB))
    with pytest.raises(MemoryBudgetError) as refused:
        predictor.window_batch("seg", (512, 512, 400))
    message = str(refused.value)
    assert "\n" not in message and message.startswith("memory: predicting a 512x512x400 volume needs ~")
    assert BUDGET_ENV in message
    # through predict: refused before any output is written
    affine = np.diag([6.0, 6.0, 8.0, 1.0])
    nifti = write_lps_nifti(np.zeros(VOLUME, dtype=np.int16), affine, tmp_path / "v.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(MemoryBudgetError):
        predictor.predict(PredictionRequest((nifti,), frozenset({"nifti"}), out))
    assert not any(out.iterdir())
