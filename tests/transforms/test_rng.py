"""Keyed generators: a pure function of (seed, keys); distinct key tuples, distinct streams."""

from __future__ import annotations

import pytest
import torch

from medssl.transforms.rng import SEED_BITS, derive_seed, keyed_generator


def draw(*args, **kwargs) -> torch.Tensor:
    return torch.rand(4, generator=keyed_generator(*args, **kwargs))


def test_the_same_seed_and_keys_give_the_same_numbers_anywhere():
    assert torch.equal(draw(3, 7, 0, 1), draw(3, 7, 0, 1))
    assert derive_seed(3, torch.tensor(7), 0, 1) == derive_seed(3, 7, 0, 1)  # tensor scalars too
    assert keyed_generator(3, 7, device="cpu").initial_seed() == derive_seed(3, 7)


def test_order_count_and_value_of_the_keys_all_matter():
    seeds = {
        derive_seed(*keys)
        for keys in [(0,), (0, 0), (0, 0, 0), (1, 0), (0, 1), (0, 1, 0), (0, 0, 1), (1,), (0, -1)]
    }
    assert len(seeds) == 9
    assert not torch.equal(draw(0, 1, 2), draw(0, 2, 1))


def test_seeds_are_non_negative_int64_for_large_and_negative_keys():
    for keys in [(0,), (2**62, 1 << 40, -1), (-(2**100), 2**120)]:
        assert 0 <= derive_seed(*keys) < 2**SEED_BITS
    with pytest.raises(ValueError, match="128 bits"):
        derive_seed(0, 2**200)
