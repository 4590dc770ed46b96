"""Guideline contrastive loss and zero-shot logits: invariants, a known value, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medssl.losses.guideline import (
    class_prototypes,
    guideline_contrastive_loss,
    zero_shot_logits,
)


def guidelines(num_classes: int = 3, per_class: int = 2, dim: int = 8):
    g = torch.randn(num_classes * per_class, dim)
    return g, torch.arange(num_classes).repeat_interleave(per_class)


def test_known_value_two_classes():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[3.0, 0.0]])
    loss = guideline_contrastive_loss(z, g, torch.tensor([0, 1]), torch.tensor([0]), 1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-6)
    # multi-hot on both classes: mean of -log p over the two positives
    both = guideline_contrastive_loss(z, g, torch.tensor([0, 1]), torch.tensor([[1.0, 1.0]]), 1.0)
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
    own = guideline_contrastive_loss(protos[0:1], g, sc, target, 0.1)
    other = guideline_contrastive_loss(protos[1:2], g, sc, target, 0.1)
    assert own < other


def test_invariant_to_scaling_z():
    g, sc = guidelines()
    z, y = torch.randn(5, 8), torch.randint(0, 3, (5,))
    a = guideline_contrastive_loss(z, g, sc, y, 0.1)
    b = guideline_contrastive_loss(z * 37.0, g, sc, y, 0.1)
    torch.testing.assert_close(a, b)


def test_temperature_sharpens_a_correct_match_and_flattens_towards_log_c():
    g, sc = guidelines()
    z = class_prototypes(g, sc)  # every image sits on its own prototype
    y = torch.arange(3)
    losses = [guideline_contrastive_loss(z, g, sc, y, t).item() for t in (0.01, 0.1, 1.0, 1e4)]
    assert losses == sorted(losses)
    assert losses[-1] == pytest.approx(math.log(3), abs=1e-3)


def test_permuting_classes_and_targets_together_changes_nothing():
    g, sc = guidelines(num_classes=4)
    z = torch.randn(6, 8)
    targets = (torch.rand(6, 4) > 0.5).float()
    targets[:, 0] = 1.0
    perm = torch.tensor([2, 0, 3, 1])  # new class index of old class c is perm[c]
    inverse = torch.argsort(perm)
    a = guideline_contrastive_loss(z, g, sc, targets, 0.2)
    b = guideline_contrastive_loss(z, g, perm[sc], targets[:, inverse], 0.2)
    torch.testing.assert_close(a, b)
    # sentence order within the bank does not matter either
    shuffle = torch.randperm(g.shape[0])
    c = guideline_contrastive_loss(z, g[shuffle], sc[shuffle], targets, 0.2)
    torch.testing.assert_close(a, c)


def test_index_targets_equal_one_hot_targets():
    g, sc = guidelines()
    z, y = torch.randn(4, 8), torch.tensor([0, 2, 1, 2])
    torch.testing.assert_close(
        guideline_contrastive_loss(z, g, sc, y),
        guideline_contrastive_loss(z, g, sc, F.one_hot(y, 3)),
    )


def test_rows_without_positive_are_skipped():
    g, sc = guidelines()
    z = torch.randn(3, 8)
    targets = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 1.0, 0]])
    full = guideline_contrastive_loss(z, g, sc, targets)
    kept = guideline_contrastive_loss(z[[0, 2]], g, sc, targets[[0, 2]])
    torch.testing.assert_close(full, kept)
    zero = guideline_contrastive_loss(z.requires_grad_(), g, sc, torch.zeros(3, 3))
    assert zero.item() == 0.0
    zero.backward()


def test_gradient_reaches_z_and_projection():
    g, sc = guidelines()
    projection = torch.nn.Linear(5, 8)
    features = torch.randn(4, 5, requires_grad=True)
    loss = guideline_contrastive_loss(projection(features), g, sc, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_zero_shot_logits_are_cosines_over_temperature():
    protos = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[1.0, 1.0]])
    logits = zero_shot_logits(z, protos, temperature=0.5)
    torch.testing.assert_close(logits, torch.full((1, 2), 2**-0.5 / 0.5))


def test_bad_input_raises():
    g, sc = guidelines()
    z = torch.randn(2, 8)
    with pytest.raises(ValueError, match="z must be"):
        guideline_contrastive_loss(torch.randn(8), g, sc, torch.tensor([0]))
    with pytest.raises(ValueError, match="D = 8"):
        guideline_contrastive_loss(z, torch.randn(6, 4), sc, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="sentence_class"):
        guideline_contrastive_loss(z, g, sc[:-1], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        guideline_contrastive_loss(z, g, sc.float(), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no guideline sentence"):
        class_prototypes(g, sc, num_classes=4)
    with pytest.raises(ValueError, match="lie in"):
        guideline_contrastive_loss(z, g, sc, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        guideline_contrastive_loss(z, g, sc, torch.ones(2, 4))
    with pytest.raises(ValueError, match=">= 0"):
        guideline_contrastive_loss(z, g, sc, -torch.ones(2, 3))
    with pytest.raises(ValueError, match="temperature"):
        guideline_contrastive_loss(z, g, sc, torch.tensor([0, 1]), temperature=0.0)
    with pytest.raises(ValueError, match="prototypes"):
        zero_shot_logits(z, torch.randn(3, 5))
