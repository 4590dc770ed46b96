"""InfoNCE / MV-InfoNCE (medssl.losses.infonce): invariants and known values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medssl.losses import info_nce_loss


def brute_force_pairs(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """Loop-by-loop multi-positive InfoNCE, written independently of the vectorised code."""
    n, v, _ = z.shape
    flat = F.normalize(z.reshape(n * v, -1), dim=1)
    terms = []
    for a in range(n * v):
        others = [c for c in range(n * v) if c != a]
        denominator = torch.logsumexp(
            torch.stack([flat[a] @ flat[c] / temperature for c in others]), 0
        )
        for p in others:
            if p // v == a // v:
                terms.append(denominator - flat[a] @ flat[p] / temperature)
    return torch.stack(terms).mean()


def brute_force_joint(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """MV-InfoNCE (Koromilas et al. 2025), one log-ratio per sample, by loops."""
    n, v, _ = z.shape
    flat = F.normalize(z.reshape(n * v, -1), dim=1)
    terms = []
    for i in range(n):
        positive, everything = [], []
        for a in range(i * v, (i + 1) * v):
            for c in range(n * v):
                if c == a:
                    continue
                s = flat[a] @ flat[c] / temperature
                everything.append(s)
                if c // v == i:
                    positive.append(s)
        terms.append(
            torch.logsumexp(torch.stack(everything), 0) - torch.logsumexp(torch.stack(positive), 0)
        )
    return torch.stack(terms).mean()


def test_two_view_form_is_symmetric_in_the_views():
    a, b = torch.randn(6, 16), torch.randn(6, 16)
    assert torch.allclose(info_nce_loss(a, b), info_nce_loss(b, a), atol=1e-6)


def test_two_view_form_equals_simclr_nt_xent_written_as_cross_entropy():
    torch.manual_seed(0)
    a, b, t = torch.randn(5, 8), torch.randn(5, 8), 0.2
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = (z @ z.T / t).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(5, 10), torch.arange(0, 5)])
    assert torch.allclose(
        info_nce_loss(a, b, temperature=t), F.cross_entropy(logits, target), atol=1e-6
    )


@pytest.mark.parametrize("n", [1, 3, 8])
def test_identical_embeddings_give_log_of_the_number_of_candidates(n):
    z = torch.ones(n, 2, 4)
    assert info_nce_loss(z).item() == pytest.approx(math.log(2 * n - 1), abs=1e-5)
    z3 = torch.ones(n, 3, 4)
    assert info_nce_loss(z3).item() == pytest.approx(math.log(3 * n - 1), abs=1e-5)
    assert info_nce_loss(z3, form="joint").item() == pytest.approx(
        math.log((3 * n - 1) / 2), abs=1e-5
    )


def test_matching_views_with_orthogonal_negatives_at_low_temperature_reach_the_floor():
    n = 6
    views = torch.eye(n).unsqueeze(1).repeat(1, 3, 1)  # sample i is basis vector e_i in all views
    assert info_nce_loss(views[:, 0], views[:, 1], temperature=0.01).item() < 1e-6
    assert info_nce_loss(views, temperature=0.01, form="joint").item() < 1e-6
    # "pairs" with V views: the V - 1 equally good positives share the softmax, floor log(V - 1)
    assert info_nce_loss(views, temperature=0.01).item() == pytest.approx(math.log(2), abs=1e-5)


def test_multi_view_form_with_two_views_equals_the_two_view_form():
    a, b = torch.randn(7, 12), torch.randn(7, 12)
    assert torch.allclose(info_nce_loss(torch.stack([a, b], 1)), info_nce_loss(a, b), atol=1e-6)


@pytest.mark.parametrize("views", [2, 3, 4])
def test_multi_view_forms_match_loop_implementations(views):
    torch.manual_seed(views)
    z = torch.randn(5, views, 8)
    assert torch.allclose(info_nce_loss(z, temperature=0.3), brute_force_pairs(z, 0.3), atol=1e-5)
    assert torch.allclose(
        info_nce_loss(z, temperature=0.3, form="joint"), brute_force_joint(z, 0.3), atol=1e-5
    )


def test_loss_ignores_embedding_scale_and_sample_order():
    z = torch.randn(6, 3, 8)
    perm = torch.randperm(6)
    assert torch.allclose(info_nce_loss(z), info_nce_loss(5.0 * z), atol=1e-6)
    assert torch.allclose(info_nce_loss(z), info_nce_loss(z[perm]), atol=1e-6)


def test_pulling_views_together_lowers_the_loss():
    z = torch.randn(8, 2, 16)
    closer = z.clone()
    closer[:, 1] = 0.5 * (z[:, 0] + z[:, 1])
    assert info_nce_loss(closer) < info_nce_loss(z)


@pytest.mark.parametrize("form", ["pairs", "joint"])
def test_gradient_is_finite_even_for_identical_embeddings(form):
    for z in (torch.randn(4, 3, 8), torch.ones(4, 3, 8)):
        z = z.requires_grad_()
        info_nce_loss(z, temperature=0.05, form=form).backward()
        assert torch.isfinite(z.grad).all()


def test_bfloat16_inputs_give_a_float32_loss():
    z = torch.randn(4, 2, 8)
    loss = info_nce_loss(z.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(info_nce_loss(z).item(), abs=0.05)


@pytest.mark.parametrize(
    "args",
    [
        (torch.randn(4, 8),),  # one [N, D] view alone
        (torch.randn(4, 1, 8),),  # a single view per sample
        (torch.randn(4, 2, 3, 8),),
        (torch.randn(0, 2, 8),),
        (torch.randn(4, 8), torch.randn(5, 8)),
        (torch.randn(4, 2, 8), torch.randn(4, 2, 8)),
    ],
)
def test_bad_shapes_raise_value_error(args):
    with pytest.raises(ValueError):
        info_nce_loss(*args)


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_temperature_raises_value_error(temperature):
    with pytest.raises(ValueError, match="temperature"):
        info_nce_loss(torch.randn(4, 2, 8), temperature=temperature)


def test_unknown_form_raises_value_error():
    with pytest.raises(ValueError, match="form"):
        info_nce_loss(torch.randn(4, 2, 8), form="supcon")  # type: ignore[arg-type]
