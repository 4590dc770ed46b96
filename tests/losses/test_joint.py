"""Joint 2D/3D losses: volume cluster agreement and masked slice-embedding prediction."""

from __future__ import annotations

import pytest
import torch

from medssl.losses.joint import masked_slice_prediction_loss, volume_cluster_agreement_loss
from medssl.losses.swav import swav_loss


def test_cluster_agreement_is_symmetric_and_is_two_view_swav():
    a, b = torch.randn(6, 5), torch.randn(6, 5)
    ab = volume_cluster_agreement_loss(a, b)
    torch.testing.assert_close(ab, volume_cluster_agreement_loss(b, a))
    torch.testing.assert_close(ab, swav_loss([a, b], (0, 1)))


def test_agreeing_confident_views_score_lower_than_disagreeing_ones():
    codes = torch.eye(4).repeat(2, 1) * 5.0  # each volume clearly in one cluster, balanced
    assert volume_cluster_agreement_loss(codes, codes) < volume_cluster_agreement_loss(
        codes, codes.roll(1, 1)
    )


def test_cluster_agreement_sends_gradient_to_both_views_and_refuses_bad_shapes():
    a, b = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    volume_cluster_agreement_loss(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="volume scores"):
        volume_cluster_agreement_loss(torch.randn(4, 3), torch.randn(4, 2))


def test_masked_prediction_is_zero_on_aligned_targets_and_counts_masked_slices_only():
    target = torch.randn(2, 5, 8)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, 1] = True
    assert float(masked_slice_prediction_loss(3.0 * target, target, mask)) == pytest.approx(
        0.0, abs=1e-6
    )
    wrong = target.clone()
    wrong[:, 0] = -wrong[:, 0]  # unmasked slices do not count
    assert float(masked_slice_prediction_loss(wrong, target, mask)) == pytest.approx(0.0, abs=1e-6)
    opposite = -target
    assert float(masked_slice_prediction_loss(opposite, target, mask)) == pytest.approx(
        4.0, abs=1e-5
    )


def test_masked_prediction_value_is_two_minus_two_cosine():
    p, t = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    mask = torch.tensor([[True, False, True]])
    cos = torch.nn.functional.cosine_similarity(p, t, dim=-1)[mask]
    torch.testing.assert_close(masked_slice_prediction_loss(p, t, mask), (2 - 2 * cos).mean())


def test_masked_prediction_gives_no_gradient_to_the_target_and_refuses_bad_input():
    p, t = torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.ones(2, 3, dtype=torch.bool)
    masked_slice_prediction_loss(p, t, mask).backward()
    assert p.grad is not None and t.grad is None
    with pytest.raises(ValueError, match="mask"):
        masked_slice_prediction_loss(p, t, mask[:, :2])
    with pytest.raises(ValueError, match="prediction and target"):
        masked_slice_prediction_loss(p, t[:, :2], mask)
    with pytest.raises(ValueError, match="no position is masked"):
        masked_slice_prediction_loss(p, t, torch.zeros(2, 3, dtype=torch.bool))
