"""Dice + CE and deep supervision: known values, agreement with MONAI, bad input refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from medssl.losses.segmentation import deep_supervision_loss, dice_ce_loss, soft_dice_loss


def _perfect_logits(target: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(target, k).movedim(-1, 1).float() * 40.0 - 20.0


def test_dice_is_zero_for_a_perfect_prediction_and_near_one_for_the_opposite():
    target = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    target[:, 2:5, 2:5, 2:5] = 1
    target[:, 5:7, 5:7, 5:7] = 2
    assert soft_dice_loss(_perfect_logits(target, 3), target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = (target + 1) % 3
    assert soft_dice_loss(_perfect_logits(wrong, 3), target).item() == pytest.approx(1.0, abs=1e-3)


def test_dice_matches_monai_batch_dice_without_background():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 7, 5)
    target = torch.randint(0, 4, (2, 6, 7, 5))
    ours = soft_dice_loss(logits, target)
    monai = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, target[:, None])
    assert ours.item() == pytest.approx(monai.item(), abs=1e-6)


def test_dice_ce_adds_cross_entropy():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 5, 5)
    target = torch.randint(0, 3, (1, 5, 5))
    expected = soft_dice_loss(logits, target) + 0.5 * F.cross_entropy(logits, target)
    assert dice_ce_loss(logits, target, 1.0, 0.5).item() == pytest.approx(expected.item(), rel=1e-6)


def test_deep_supervision_weights_halve_and_labels_are_downsampled():
    torch.manual_seed(2)
    target = torch.randint(0, 2, (1, 8, 8, 8))
    full, half = torch.randn(1, 2, 8, 8, 8), torch.randn(1, 2, 4, 4, 4)
    small = F.interpolate(target[:, None].float(), size=(4, 4, 4), mode="nearest")[:, 0].long()
    expected = (2 / 3) * dice_ce_loss(full, target) + (1 / 3) * dice_ce_loss(half, small)
    assert deep_supervision_loss([full, half], target).item() == pytest.approx(expected.item(), rel=1e-6)
    assert deep_supervision_loss(full, target).item() == pytest.approx(dice_ce_loss(full, target).item())


def test_gradients_flow_and_are_finite():
    logits = torch.randn(1, 3, 4, 4, 4, requires_grad=True)
    loss = dice_ce_loss(logits, torch.randint(0, 3, (1, 4, 4, 4)))
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("logits", "target", "match"),
    [
        (torch.randn(1, 2, 4, 4), torch.zeros(1, 5, 4, dtype=torch.long), "must agree"),
        (torch.randn(1, 2, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long), "must agree"),
        (torch.randn(1, 2, 4, 4), torch.full((1, 4, 4), 2), "must lie in 0..1"),
        (torch.randn(1, 2, 4, 4), torch.full((1, 4, 4), -1), "must lie in 0..1"),
    ],
)
def test_bad_input_is_refused(logits, target, match):
    with pytest.raises(ValueError, match=match):
        dice_ce_loss(logits, target)


def test_deep_supervision_needs_an_output():
    with pytest.raises(ValueError, match="at least one"):
        deep_supervision_loss([], torch.zeros(1, 4, 4, dtype=torch.long))
