"""Guideline losses: RAD's BCE with sampled negatives (hand-computed values, the draw) and the
prototype softmax form (invariants, a known value); bad input raises."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medssl.losses.guideline import (
    class_prototypes,
    guideline_bce_loss,
    prototype_logits,
    prototype_softmax_loss,
    sample_negatives,
)


def guidelines(num_classes: int = 3, per_class: int = 2, dim: int = 8):
    g = torch.randn(num_classes * per_class, dim)
    return g, torch.arange(num_classes).repeat_interleave(per_class)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


AXES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # cosines 1, 0, -1 to z = [1, 0]


def test_rad_loss_by_hand_one_positive_all_negatives_at_default_temperature_two():
    # s = cos / 2.0 = [0.5, 0, -0.5]; one positive, min(5 * 1, 2) = 2 negatives: both others
    loss = guideline_bce_loss(torch.tensor([[3.0, 0.0]]), AXES, torch.arange(3), torch.tensor([0]))
    by_hand = (softplus(-0.5) + math.log(2.0) + softplus(-0.5)) / 3  # BCE(x, 1) = softplus(-x)
    assert loss.item() == pytest.approx(by_hand, abs=1e-6)


def test_rad_loss_by_hand_two_positives_share_the_target():
    # positives 0 and 1 get target 1/2 each (as the reference); min(5 * 2, 1) = 1 negative
    loss = guideline_bce_loss(torch.tensor([[1.0, 0.0]]), AXES, torch.arange(3), torch.tensor([[1.0, 1.0, 0.0]]))
    def bce(x: float, t: float) -> float:
        return softplus(x) - t * x

    by_hand = (bce(0.5, 0.5) + bce(0.0, 0.5) + bce(-0.5, 0.0)) / 3
    assert loss.item() == pytest.approx(by_hand, abs=1e-6)


def test_rad_loss_scores_the_positive_and_a_sampled_negative_only():
    # 6 classes, one positive, one negative per positive: the loss is the mean of the
    # positive's BCE and one drawn negative's, and every negative gets drawn sometimes
    angles = torch.linspace(0.0, 2.5, 6)
    g = torch.stack((angles.cos(), angles.sin()), dim=1)
    z = torch.tensor([[1.0, 0.0]])
    s = (g @ z.T).squeeze(1) / 2.0
    pos = softplus(-float(s[0]))
    options = {j: (pos + softplus(float(s[j]))) / 2 for j in range(1, 6)}
    seen = set()
    for seed in range(60):
        gen = torch.Generator().manual_seed(seed)
        value = guideline_bce_loss(z, g, torch.arange(6), torch.tensor([0]), negatives_per_positive=1, generator=gen).item()
        match = [j for j, v in options.items() if abs(v - value) < 1e-6]
        assert len(match) == 1, value
        seen.add(match[0])
    assert seen == set(range(1, 6))
    again = [guideline_bce_loss(z, g, torch.arange(6), torch.tensor([0]), 2.0, 1, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    torch.testing.assert_close(again[0], again[1])


def test_negative_draw_counts_and_never_takes_a_positive():
    positive = torch.tensor([[1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0], [0] * 7]).bool()
    drawn = sample_negatives(positive, 2, torch.Generator().manual_seed(0))
    assert drawn.sum(1).tolist() == [2, 4, 1, 0]
    assert not bool((drawn & positive).any())
    with pytest.raises(ValueError, match="negatives_per_positive"):
        sample_negatives(positive, 0)


def test_rad_loss_skips_rows_without_positive_and_reaches_z():
    z = torch.randn(3, 2, requires_grad=True)
    targets = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 1.0, 0]])
    full = guideline_bce_loss(z, AXES, torch.arange(3), targets)
    kept = guideline_bce_loss(z[[0, 2]], AXES, torch.arange(3), targets[[0, 2]])
    torch.testing.assert_close(full, kept)  # 3 classes: every negative is scored, no draw
    full.backward()
    assert z.grad is not None and z.grad[[0, 2]].abs().sum() > 0 and z.grad[1].abs().sum() == 0
    assert guideline_bce_loss(z, AXES, torch.arange(3), torch.zeros(3, 3)).item() == 0.0


def test_known_value_two_classes():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[3.0, 0.0]])
    loss = prototype_softmax_loss(z, g, torch.tensor([0, 1]), torch.tensor([0]), 1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-6)
    # multi-hot on both classes: mean of -log p over the two positives
    both = prototype_softmax_loss(z, g, torch.tensor([0, 1]), torch.tensor([[1.0, 1.0]]), 1.0)
    p0 = math.exp(1) / (math.exp(1) + 1)
    assert both.item() == pytest.approx(-(math.log(p0) + math.log(1 - p0)) / 2, abs=1e-6)


def test_prototypes_are_unit_means_of_unit_sentences():
    g = torch.tensor([[2.0, 0.0], [0.0, 5.0], [0.0, -1.0]])
    protos = class_prototypes(g, torch.tensor([0, 0, 1]))
    torch.testing.assert_close(protos, torch.tensor([[2**-0.5, 2**-0.5], [0.0, -1.0]]))


def test_lower_at_own_prototype_than_at_another():
    g, sc = guidelines()
    protos = class_prototypes(g, sc)
    target = torch.tensor([0])
    own = prototype_softmax_loss(protos[0:1], g, sc, target, 0.1)
    other = prototype_softmax_loss(protos[1:2], g, sc, target, 0.1)
    assert own < other


def test_invariant_to_scaling_z():
    g, sc = guidelines()
    z, y = torch.randn(5, 8), torch.randint(0, 3, (5,))
    a = prototype_softmax_loss(z, g, sc, y, 0.1)
    b = prototype_softmax_loss(z * 37.0, g, sc, y, 0.1)
    torch.testing.assert_close(a, b)


def test_temperature_sharpens_a_correct_match_and_flattens_towards_log_c():
    g, sc = guidelines()
    z = class_prototypes(g, sc)  # every image sits on its own prototype
    y = torch.arange(3)
    losses = [prototype_softmax_loss(z, g, sc, y, t).item() for t in (0.01, 0.1, 1.0, 1e4)]
    assert losses == sorted(losses)
    assert losses[-1] == pytest.approx(math.log(3), abs=1e-3)


def test_permuting_classes_and_targets_together_changes_nothing():
    g, sc = guidelines(num_classes=4)
    z = torch.randn(6, 8)
    targets = (torch.rand(6, 4) > 0.5).float()
    targets[:, 0] = 1.0
    perm = torch.tensor([2, 0, 3, 1])  # new class index of old class c is perm[c]
    inverse = torch.argsort(perm)
    a = prototype_softmax_loss(z, g, sc, targets, 0.2)
    b = prototype_softmax_loss(z, g, perm[sc], targets[:, inverse], 0.2)
    torch.testing.assert_close(a, b)
    # sentence order within the bank does not matter either
    shuffle = torch.randperm(g.shape[0])
    c = prototype_softmax_loss(z, g[shuffle], sc[shuffle], targets, 0.2)
    torch.testing.assert_close(a, c)


def test_index_targets_equal_one_hot_targets():
    g, sc = guidelines()
    z, y = torch.randn(4, 8), torch.tensor([0, 2, 1, 2])
    torch.testing.assert_close(
        prototype_softmax_loss(z, g, sc, y),
        prototype_softmax_loss(z, g, sc, F.one_hot(y, 3)),
    )


def test_rows_without_positive_are_skipped():
    g, sc = guidelines()
    z = torch.randn(3, 8)
    targets = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 1.0, 0]])
    full = prototype_softmax_loss(z, g, sc, targets)
    kept = prototype_softmax_loss(z[[0, 2]], g, sc, targets[[0, 2]])
    torch.testing.assert_close(full, kept)
    zero = prototype_softmax_loss(z.requires_grad_(), g, sc, torch.zeros(3, 3))
    assert zero.item() == 0.0
    zero.backward()


def test_gradient_reaches_z_and_projection():
    g, sc = guidelines()
    projection = torch.nn.Linear(5, 8)
    features = torch.randn(4, 5, requires_grad=True)
    loss = prototype_softmax_loss(projection(features), g, sc, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_prototype_logits_are_cosines_over_temperature():
    protos = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[1.0, 1.0]])
    logits = prototype_logits(z, protos, temperature=0.5)
    torch.testing.assert_close(logits, torch.full((1, 2), 2**-0.5 / 0.5))


def test_bad_input_raises():
    g, sc = guidelines()
    z = torch.randn(2, 8)
    with pytest.raises(ValueError, match="z must be"):
        prototype_softmax_loss(torch.randn(8), g, sc, torch.tensor([0]))
    with pytest.raises(ValueError, match="D = 8"):
        prototype_softmax_loss(z, torch.randn(6, 4), sc, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="sentence_class"):
        prototype_softmax_loss(z, g, sc[:-1], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        prototype_softmax_loss(z, g, sc.float(), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no guideline sentence"):
        class_prototypes(g, sc, num_classes=4)
    with pytest.raises(ValueError, match="lie in"):
        prototype_softmax_loss(z, g, sc, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        prototype_softmax_loss(z, g, sc, torch.ones(2, 4))
    with pytest.raises(ValueError, match=">= 0"):
        prototype_softmax_loss(z, g, sc, -torch.ones(2, 3))
    with pytest.raises(ValueError, match="temperature"):
        prototype_softmax_loss(z, g, sc, torch.tensor([0, 1]), temperature=0.0)
    with pytest.raises(ValueError, match="prototypes"):
        prototype_logits(z, torch.randn(3, 5))
