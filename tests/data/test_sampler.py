"""StepSampler: the index at a position depends on the position only; ranks share epochs."""

from __future__ import annotations

from itertools import islice

import pytest

from medssl.data.sampler import StepSampler


def _take(sampler: StepSampler, k: int) -> list[int]:
    return list(islice(iter(sampler), k))


def test_starting_later_continues_the_same_stream():
    whole = _take(StepSampler(7, seed=3), 30)
    assert _take(StepSampler(7, seed=3, start=lambda: 12), 18) == whole[12:]


def test_each_epoch_is_a_permutation_and_epochs_differ():
    stream = _take(StepSampler(5, seed=1), 15)
    epochs = [[i % 5 for i in stream[k : k + 5]] for k in (0, 5, 10)]
    assert all(sorted(e) == list(range(5)) for e in epochs)
    assert [i // 5 for i in stream] == [0] * 5 + [1] * 5 + [2] * 5  # the epoch travels in the index
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]


def test_two_ranks_together_see_each_epoch_once():
    a = _take(StepSampler(6, seed=0, rank=0, world_size=2), 3)
    b = _take(StepSampler(6, seed=0, rank=1, world_size=2), 3)
    assert sorted(a + b) == sorted(_take(StepSampler(6, seed=0), 6))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        StepSampler(0)
    with pytest.raises(ValueError):
        StepSampler(4, rank=2, world_size=2)
