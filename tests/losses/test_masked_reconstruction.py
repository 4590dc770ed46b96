"""Masked reconstruction (medssl.losses.masked_reconstruction): masked positions only."""

from __future__ import annotations

import pytest
import torch

from medssl.losses import masked_reconstruction_loss, normalize_patches


def test_known_l1_and_l2_values_over_masked_patches():
    prediction = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])  # patch 2 (error 9) is visible: not counted
    assert masked_reconstruction_loss(prediction, target, mask, "l1").item() == pytest.approx(1.5)
    assert masked_reconstruction_loss(prediction, target, mask, "l2").item() == pytest.approx(2.5)


def test_visible_positions_never_change_the_loss():
    prediction, target = torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 4, 4, 4)
    mask = torch.rand(2, 1, 4, 4, 4) > 0.5
    loss = masked_reconstruction_loss(prediction, target, mask)
    changed = prediction.clone()
    changed[~mask] += 100.0
    assert torch.allclose(masked_reconstruction_loss(changed, target, mask), loss)


def test_channel_mask_broadcasts_and_every_covered_voxel_counts_once():
    prediction, target = torch.ones(1, 2, 2, 2, 2), torch.zeros(1, 2, 2, 2, 2)
    mask = torch.zeros(1, 1, 2, 2, 2, dtype=torch.bool)
    mask[..., 0, 0, 0] = True
    target[0, 0, 0, 0, 0] = 3.0  # channel 0 error 2, channel 1 error 1 at the masked voxel
    assert masked_reconstruction_loss(prediction, target, mask, "l1").item() == pytest.approx(1.5)


def test_gradient_reaches_masked_predictions_only():
    prediction = torch.randn(2, 5, 3, requires_grad=True)
    mask = torch.tensor([[True, False, False, True, False], [False] * 5])
    masked_reconstruction_loss(prediction, torch.randn(2, 5, 3), mask).backward()
    assert (prediction.grad[~mask] == 0).all() and (prediction.grad[mask] != 0).all()


def test_normalized_patches_have_zero_mean_and_unit_variance():
    patches = normalize_patches(torch.randn(2, 7, 64) * 5 + 3)
    assert torch.allclose(patches.mean(-1), torch.zeros(2, 7), atol=1e-5)
    assert torch.allclose(patches.var(-1, unbiased=False), torch.ones(2, 7), atol=1e-3)


def test_no_masked_patch_raises_value_error():
    with pytest.raises(ValueError, match="no position is masked"):
        masked_reconstruction_loss(
            torch.randn(2, 4, 3), torch.randn(2, 4, 3), torch.zeros(2, 4, dtype=torch.bool)
        )


@pytest.mark.parametrize(
    "prediction,target,mask,kind",
    [
        (torch.randn(2, 4, 3), torch.randn(2, 4, 2), torch.ones(2, 4, dtype=torch.bool), "l2"),
        (torch.randn(2, 4, 3), torch.randn(2, 4, 3), torch.ones(2, 5, dtype=torch.bool), "l2"),
        (
            torch.randn(2, 4, 3),
            torch.randn(2, 4, 3),
            torch.ones(2, 4, 3, 1, dtype=torch.bool),
            "l2",
        ),
        (torch.randn(2, 4, 3), torch.randn(2, 4, 3), torch.ones(2, 4, dtype=torch.bool), "huber"),
    ],
)
def test_bad_inputs_raise_value_error(prediction, target, mask, kind):
    with pytest.raises(ValueError):
        masked_reconstruction_loss(prediction, target, mask, kind)
