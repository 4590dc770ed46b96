"""SwAV / Sinkhorn (medssl.losses.swav): balanced codes, swapped loss, prototypes."""

from __future__ import annotations

import pytest
import torch

from medssl.losses import (
    normalize_prototypes_,
    prototype_scores,
    sinkhorn,
    swapped_prediction,
    swav_loss,
)


def cosine_scores(batch: int, prototypes: int, dim: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return prototype_scores(
        torch.randn(batch, dim, generator=g), torch.randn(prototypes, dim, generator=g)
    )


@pytest.mark.parametrize("batch,prototypes", [(64, 10), (32, 32), (16, 48)])
def test_codes_are_distributions_over_prototypes_and_balanced_over_the_batch(batch, prototypes):
    """Convention: rows sum to 1; column sums / B -> 1/K (each prototype gets an equal share)."""
    q = sinkhorn(cosine_scores(batch, prototypes), epsilon=0.05, iterations=50)
    assert q.shape == (batch, prototypes)
    assert torch.allclose(q.sum(dim=1), torch.ones(batch), atol=1e-5)
    assert torch.allclose(
        q.sum(dim=0) / batch, torch.full((prototypes,), 1 / prototypes), atol=1e-3
    )
    assert (q >= 0).all()


def test_three_iterations_spread_a_batch_that_all_prefers_one_prototype():
    scores = cosine_scores(64, 10) * 0.5
    scores[:, 0] += 0.5  # every sample's best prototype is 0: the collapse SwAV's codes prevent
    raw_share = torch.softmax(scores / 0.05, dim=1).sum(0)[0] / 64
    balanced_share = sinkhorn(scores, iterations=3).sum(0)[0] / 64
    assert raw_share > 0.9
    assert balanced_share < 0.15


def test_codes_follow_the_samples_and_ignore_a_constant_shift():
    scores = cosine_scores(24, 6)
    perm = torch.randperm(24)
    q = sinkhorn(scores)
    assert torch.allclose(sinkhorn(scores[perm]), q[perm], atol=1e-6)
    assert torch.allclose(sinkhorn(scores + 0.7), q, atol=1e-6)


def test_codes_carry_no_gradient_and_leave_their_input_alone():
    scores = cosine_scores(8, 4).requires_grad_()
    before = scores.detach().clone()
    q = sinkhorn(scores)
    assert not q.requires_grad
    assert torch.equal(scores.detach(), before)
    assert sinkhorn(scores.detach().bfloat16()).dtype == torch.float32


def test_swav_loss_with_two_crops_is_the_mean_of_both_swapped_cross_entropies():
    s0, s1 = cosine_scores(16, 8, seed=1), cosine_scores(16, 8, seed=2)
    q0, q1 = sinkhorn(s0), sinkhorn(s1)
    by_hand = 0.5 * (
        -(q0 * torch.log_softmax(s1 / 0.1, 1)).sum(1).mean()
        - (q1 * torch.log_softmax(s0 / 0.1, 1)).sum(1).mean()
    )
    assert torch.allclose(swav_loss([s0, s1]), by_hand, atol=1e-6)
    assert torch.allclose(
        swapped_prediction(s1, q0, 0.1), -(q0 * torch.log_softmax(s1 / 0.1, 1)).sum(1).mean()
    )


def test_small_crops_only_predict_and_never_assign():
    crops = [cosine_scores(16, 8, seed=s) for s in range(4)]
    pairs = [(0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]
    expected = torch.stack(
        [swapped_prediction(crops[v], sinkhorn(crops[i]), 0.1) for i, v in pairs]
    ).mean()
    assert torch.allclose(swav_loss(crops, assign_crops=(0, 1)), expected, atol=1e-6)


def test_swapped_loss_decreases_under_sgd_on_a_toy_problem():
    torch.manual_seed(0)
    centres = torch.randn(4, 8) * 3
    samples = centres.repeat_interleave(16, 0)  # 64 samples from 4 clusters
    encoder = torch.nn.Linear(8, 16)
    prototypes = torch.nn.Linear(16, 4, bias=False)
    optimizer = torch.optim.SGD([*encoder.parameters(), *prototypes.parameters()], lr=0.5)

    def loss_now() -> torch.Tensor:
        g = torch.Generator().manual_seed(1)  # same augmentations every call: a fixed objective
        crops = [encoder(samples + 0.5 * torch.randn(samples.shape, generator=g)) for _ in range(3)]
        return swav_loss([prototype_scores(c, prototypes.weight) for c in crops])

    first = loss_now().item()
    for _ in range(12):
        optimizer.zero_grad()
        loss_now().backward()
        optimizer.step()
        normalize_prototypes_(prototypes)
    assert loss_now().item() < first - 0.05


def test_normalize_prototypes_gives_unit_rows_in_place():
    layer = torch.nn.Linear(16, 5, bias=False)
    weight = normalize_prototypes_(layer)
    assert weight is layer.weight
    assert torch.allclose(layer.weight.norm(dim=1), torch.ones(5), atol=1e-6)
    raw = torch.randn(3, 4)
    normalize_prototypes_(raw)
    assert torch.allclose(raw.norm(dim=1), torch.ones(3), atol=1e-6)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: sinkhorn(s, epsilon=0.0),
        lambda s: sinkhorn(s, iterations=0),
        lambda s: sinkhorn(s[0]),
        lambda s: swav_loss([s]),
        lambda s: swav_loss([s, s[:, :3]]),
        lambda s: swav_loss([s, s], assign_crops=(0, 2)),
        lambda s: swav_loss([s, s], assign_crops=(0, 0)),
        lambda s: swav_loss([s, s], temperature=-1.0),
        lambda s: prototype_scores(s, torch.randn(4, 3)),
        lambda s: normalize_prototypes_(torch.randn(4)),
    ],
)
def test_bad_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call(cosine_scores(8, 4))
