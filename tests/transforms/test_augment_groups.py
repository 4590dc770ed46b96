"""BatchAugment groups: samples of one group share every draw; singleton groups change nothing."""

from __future__ import annotations

import pytest
import torch

from medssl.transforms import AugmentConfig, BatchAugment

ALWAYS = AugmentConfig(
    flip_prob=1,
    rot90_prob=1,
    affine_prob=1,
    intensity_prob=1,
    gamma_prob=1,
    blur_prob=1,
    noise_prob=0,
)


@pytest.mark.parametrize("dims", [2, 3])
def test_one_label_per_sample_is_the_ungrouped_draw(dims):
    x = torch.randn((5, 1) + (8,) * dims, generator=torch.Generator().manual_seed(0))
    augment = BatchAugment.from_config(AugmentConfig(affine_prob=0.5, blur_prob=0.5), (8,) * dims)
    grouped = augment(x, torch.Generator().manual_seed(2), groups=torch.arange(5) * 3)
    assert torch.equal(grouped, augment(x, torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("dims", [2, 3])
def test_samples_of_a_group_are_augmented_alike_and_groups_apart(dims):
    x = torch.randn((1, 1) + (8,) * dims, generator=torch.Generator().manual_seed(0)).expand(
        6, *([-1] * (dims + 1))
    )
    groups = torch.tensor([5, 1, 5, 1, 5, 1])
    out = BatchAugment.from_config(ALWAYS, (8,) * dims)(
        x, torch.Generator().manual_seed(4), groups=groups
    )
    for label in (1, 5):
        rows = out[groups == label]
        assert all(torch.equal(rows[0], r) for r in rows[1:])
    assert not torch.allclose(out[0], out[1])


def test_noise_fields_stay_per_sample_and_bad_groups_are_refused():
    x = torch.zeros(4, 1, 8, 8)
    noisy = BatchAugment.from_config(AugmentConfig(noise_prob=1, noise_std=(0.5, 0.5)), (8, 8))
    out = noisy(x, torch.Generator().manual_seed(0), groups=torch.zeros(4, dtype=torch.long))
    assert not torch.equal(out[0], out[1])
    with pytest.raises(ValueError, match="groups"):
        noisy(x, torch.Generator(), groups=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="groups"):
        noisy(x, torch.Generator(), groups=torch.zeros(4))
