"""VoCo (medssl.losses.voco): position labels by hand, loss minimum, regulariser, total."""

from __future__ import annotations

import pytest
import torch

from medssl.losses import (
    base_regularization,
    overlap_labels,
    position_logits,
    position_loss,
    voco_loss,
)

# a 2 x 2 grid of unit base crops over [0, 2] x [0, 2]; boxes are (lo_x, lo_y, hi_x, hi_y)
GRID_2D = torch.tensor(
    [[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 2.0], [1.0, 0.0, 2.0, 1.0], [1.0, 1.0, 2.0, 2.0]]
)


def grid_3d(n: int, size: float = 1.0) -> torch.Tensor:
    """n x n x n base crops of edge ``size`` tiling [0, n*size]^3, as [n^3, 6]."""
    lo = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij"), -1)
    lo = lo.reshape(-1, 3) * size
    return torch.cat([lo, lo + size], dim=1)


def random_crops_inside(
    batch: int, count: int, dims: int, region: float, size: float
) -> torch.Tensor:
    lo = torch.rand(batch, count, dims) * (region - size)
    return torch.cat([lo, lo + size], dim=-1)


def test_crop_exactly_on_one_base_is_one_hot():
    for k in range(4):
        labels = overlap_labels(GRID_2D[k].reshape(1, 1, 4), GRID_2D)
        assert torch.equal(labels[0, 0], torch.eye(4)[k])


def test_crop_centred_on_the_grid_corner_overlaps_each_base_by_a_quarter():
    crop = torch.tensor([[[0.5, 0.5, 1.5, 1.5]]])
    assert torch.allclose(overlap_labels(crop, GRID_2D), torch.full((1, 1, 4), 0.25))


def test_crop_straddling_two_bases_splits_by_area():
    crop = torch.tensor([[[0.0, 0.25, 1.0, 1.25]]])  # 3/4 in base 0, 1/4 in base 1
    assert torch.allclose(overlap_labels(crop, GRID_2D), torch.tensor([[[0.75, 0.25, 0.0, 0.0]]]))


def test_centre_crop_in_a_3d_grid_overlaps_each_of_eight_bases_by_an_eighth():
    crop = torch.tensor([[[0.5, 0.5, 0.5, 1.5, 1.5, 1.5]]])
    assert torch.allclose(overlap_labels(crop, grid_3d(2)), torch.full((1, 1, 8), 0.125))


@pytest.mark.parametrize("dims,bases", [(2, GRID_2D), (3, grid_3d(3, 16.0))])
def test_rows_sum_to_one_for_crops_inside_the_grid(dims, bases):
    torch.manual_seed(dims)
    region = 2.0 if dims == 2 else 48.0
    crops = random_crops_inside(3, 20, dims, region, size=region / 2.7)
    labels = overlap_labels(crops, bases)
    assert labels.shape == (3, 20, bases.shape[0])
    assert torch.allclose(labels.sum(-1), torch.ones(3, 20), atol=1e-5)
    assert (labels >= 0).all() and (labels <= 1).all()


def test_rows_give_the_inside_fraction_for_a_crop_leaving_the_grid():
    crop = torch.tensor([[[1.5, 1.5, 2.5, 2.5]]])  # a quarter inside base 3
    assert torch.allclose(overlap_labels(crop, GRID_2D), torch.tensor([[[0.0, 0.0, 0.0, 0.25]]]))


def test_per_volume_bases_and_integer_voxel_boxes_are_accepted():
    crops = torch.tensor([[[0, 0, 48, 48]], [[24, 24, 72, 72]]])
    bases = (GRID_2D * 48).long().expand(2, 4, 4)
    labels = overlap_labels(crops, bases)
    assert labels.dtype == torch.float32
    assert torch.allclose(labels, torch.tensor([[[1.0, 0, 0, 0]], [[0.25, 0.25, 0.25, 0.25]]]))


@pytest.mark.parametrize(
    "crops,bases",
    [
        (torch.zeros(1, 1, 3), torch.zeros(4, 3)),  # odd width
        (torch.tensor([[[0.0, 0, 1, 1]]]), torch.zeros(4, 6)),  # 2D crops, 3D bases
        (torch.tensor([[[0.0, 0, 0, 1]]]), GRID_2D),  # zero-area crop
        (torch.tensor([[[0.0, 0, 1, 1]]]), GRID_2D.expand(2, 4, 4)),  # batch sizes differ
        (torch.tensor([0.0, 0, 1, 1]), GRID_2D),  # crops not [B, N, 2d]
    ],
)
def test_bad_boxes_raise_value_error(crops, bases):
    with pytest.raises(ValueError):
        overlap_labels(crops, bases)


def test_position_loss_is_zero_when_predictions_equal_labels_and_grows_away_from_them():
    torch.manual_seed(0)
    labels = overlap_labels(random_crops_inside(2, 8, 2, 2.0, 1.0), GRID_2D)
    at_labels = position_loss(labels, labels)
    assert abs(at_labels.item()) < 1e-5
    for scale in (0.05, 0.2, 0.5):
        noisy = (labels + scale * torch.randn_like(labels)).clamp(0, 1)
        assert position_loss(noisy, labels) > at_labels
    further = [position_loss((labels + d).clamp(0, 1), labels).item() for d in (0.1, 0.3, 0.6)]
    assert further == sorted(further)


def test_predicting_a_one_hot_crop_from_orthogonal_bases_costs_nothing():
    bases = torch.eye(4, 8).unsqueeze(0)  # four orthogonal base embeddings
    crops = bases[:, [2, 0]]  # crop 0 is base 2's content, crop 1 base 0's
    labels = overlap_labels(GRID_2D[[2, 0]].unsqueeze(0), GRID_2D)
    assert torch.equal(position_logits(crops, bases), labels)
    terms = voco_loss(crops, bases, labels)
    assert abs(terms["position"].item()) < 1e-5 and terms["regularization"].item() == 0.0


def test_position_logits_are_clamped_cosine_similarities():
    crops, bases = torch.randn(2, 5, 16), torch.randn(2, 4, 16)
    p = position_logits(crops, bases)
    cos = torch.nn.functional.cosine_similarity(crops.unsqueeze(2), bases.unsqueeze(1), dim=-1)
    assert torch.allclose(p, cos.clamp(min=0), atol=1e-6)
    assert torch.allclose(position_logits(3 * crops, 0.5 * bases), p, atol=1e-6)


def test_base_regulariser_is_zero_for_orthogonal_bases_and_one_for_identical_ones():
    assert base_regularization(torch.eye(9).unsqueeze(0).repeat(2, 1, 1)).item() == 0.0
    assert base_regularization(torch.ones(1, 4, 8)).item() == pytest.approx(1.0, abs=1e-6)
    opposed = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    assert base_regularization(opposed).item() == 0.0
    assert base_regularization(torch.randn(2, 9, 4)).item() > 0.0


def test_voco_total_is_the_weighted_sum_of_named_terms():
    torch.manual_seed(1)
    crops, bases = torch.randn(3, 6, 16), torch.randn(3, 4, 16)
    t_crops, t_bases = crops + 0.1 * torch.randn_like(crops), bases + 0.1 * torch.randn_like(bases)
    labels = overlap_labels(random_crops_inside(3, 6, 2, 2.0, 1.0), GRID_2D)
    terms = voco_loss(
        crops,
        bases,
        labels,
        teacher_crop_embeddings=t_crops,
        teacher_base_embeddings=t_bases,
        position_weight=1.0,
        regularization_weight=0.5,
        inter_volume_weight=2.0,
    )
    assert set(terms) == {"position", "regularization", "inter_volume", "total"}
    expected = terms["position"] + 0.5 * terms["regularization"] + 2.0 * terms["inter_volume"]
    assert torch.allclose(terms["total"], expected)
    assert terms["inter_volume"] > 0


def test_inter_volume_term_is_zero_without_teacher_for_equal_teacher_or_one_volume():
    crops, bases = torch.randn(3, 6, 16), torch.randn(3, 4, 16)
    labels = torch.full((3, 6, 4), 0.25)
    assert voco_loss(crops, bases, labels)["inter_volume"].item() == 0.0
    same = voco_loss(
        crops, bases, labels, teacher_crop_embeddings=crops, teacher_base_embeddings=bases
    )
    assert abs(same["inter_volume"].item()) < 1e-5
    one = voco_loss(
        crops[:1],
        bases[:1],
        labels[:1],
        teacher_crop_embeddings=crops[:1] + 1,
        teacher_base_embeddings=bases[:1],
    )
    assert one["inter_volume"].item() == 0.0


def test_gradients_reach_the_student_only_and_are_finite():
    crops = torch.randn(2, 5, 16, requires_grad=True)
    bases = torch.randn(2, 4, 16, requires_grad=True)
    t_crops = torch.randn(2, 5, 16, requires_grad=True)
    t_bases = torch.randn(2, 4, 16, requires_grad=True)
    labels = overlap_labels(random_crops_inside(2, 5, 2, 2.0, 1.0), GRID_2D)
    voco_loss(
        crops, bases, labels, teacher_crop_embeddings=t_crops, teacher_base_embeddings=t_bases
    )["total"].backward()
    assert torch.isfinite(crops.grad).all() and crops.grad.abs().sum() > 0
    assert torch.isfinite(bases.grad).all() and bases.grad.abs().sum() > 0
    assert t_crops.grad is None and t_bases.grad is None


def test_bad_inputs_raise_value_error():
    crops, bases, labels = torch.randn(2, 5, 16), torch.randn(2, 4, 16), torch.rand(2, 5, 4)
    with pytest.raises(ValueError):
        voco_loss(crops, bases, labels[:, :, :3])
    with pytest.raises(ValueError):
        voco_loss(crops, bases[..., :8], labels)
    with pytest.raises(ValueError):
        voco_loss(crops, bases, labels, teacher_crop_embeddings=crops[:1])
    with pytest.raises(ValueError):
        voco_loss(crops, bases, labels, regularization_weight=-1.0)
    with pytest.raises(ValueError):
        position_loss(labels, labels + 1.0)  # labels outside [0, 1]
    with pytest.raises(ValueError):
        base_regularization(torch.randn(2, 1, 16))
