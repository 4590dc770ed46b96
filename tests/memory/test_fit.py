"""Fitting order (medssl.memory.fit): checkpointing, crop to half (largest axis first, in
multiples), batch to 1, crop to one multiple; flags name exactly what changed."""

from __future__ import annotations

import pytest

from medssl.memory.fit import RunSettings, first_fit, shrink_steps


def test_checkpointing_comes_first_then_the_largest_axis_in_multiples():
    steps = list(shrink_steps(RunSettings(2, (256, 256, 64)), (128, 128, 32), can_checkpoint=True))
    assert steps[0] == RunSettings(2, (256, 256, 64), True)
    assert [s.crop_size for s in steps[1:4]] == [(128, 256, 64), (128, 128, 64), (128, 128, 32)]
    assert steps[-1] == RunSettings(1, (128, 128, 32), True)


def test_crop_stops_at_half_before_the_batch_shrinks_then_goes_down_to_one_multiple():
    steps = list(shrink_steps(RunSettings(3, (96, 96, 96)), (16, 16, 16), can_checkpoint=False))
    assert not any(s.checkpointing for s in steps)
    batch_drops = [i for i, s in enumerate(steps) if s.batch_size < 3]
    assert all(min(s.crop_size) >= 48 for s in steps[: batch_drops[0]])
    assert next(s for s in steps if s.batch_size == 1) == RunSettings(1, (48, 48, 48))
    assert steps[-1] == RunSettings(1, (16, 16, 16))
    assert all(side % 16 == 0 for s in steps for side in s.crop_size)
    loads = [s.load for s in steps]
    assert loads == sorted(loads, reverse=True)


def test_a_side_that_is_not_a_multiple_goes_to_the_next_smaller_multiple():
    steps = list(shrink_steps(RunSettings(1, (100, 40)), (32, 32), can_checkpoint=False))
    assert steps[0].crop_size == (96, 40)
    assert steps[-1].crop_size == (32, 32)


def test_first_fit_and_the_flags_it_prints():
    start = RunSettings(4, (128, 128, 128))
    found = first_fit(start, (32, 32, 32), True, lambda s: s.load <= 2 * 64**3)
    assert found is not None and found.load <= 2 * 64**3
    assert found.changes(start) == [
        "--model.init_args.backbone_kwargs.use_checkpoint true",
        "--data.crop_size [64,64,64]",
        "--data.batch_size 2",
    ]
    assert first_fit(start, (32, 32, 32), True, lambda s: False) is None


def test_one_multiple_per_axis_is_required():
    with pytest.raises(ValueError, match="one positive value per crop axis"):
        list(shrink_steps(RunSettings(1, (64, 64, 64)), (32, 32), False))
