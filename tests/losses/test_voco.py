"""VoCo (medssl.losses.voco): position labels by hand, loss minimum, regulariser, both forms' totals."""

from __future__ import annotations

import math

import pytest
import torch

from medssl.losses import (
    base_regularization,
    inter_volume_loss,
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
    assert abs(position_loss(labels, labels, negatives="square").item()) < 1e-5


def test_cvpr_negatives_cost_p_squared_and_extended_negatives_minus_log_one_minus_p():
    labels = torch.tensor([[[1.0, 0.0]]])  # the crop lies in base 0 only
    predictions = torch.tensor([[[1.0, 0.5]]])  # exact on base 0, 0.5 on the untouched base 1
    assert position_loss(predictions, labels, negatives="square").item() == pytest.approx(
        0.25, abs=1e-5
    )
    assert position_loss(predictions, labels, negatives="log").item() == pytest.approx(
        math.log(2), abs=1e-5
    )
    with pytest.raises(ValueError):
        position_loss(predictions, labels, negatives="hinge")


def teacher(crops: torch.Tensor, bases: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"teacher_crop_embeddings": crops, "teacher_base_embeddings": bases}


def embeddings(seed: int, batch: int = 3, crops: int = 6, bases: int = 4, width: int = 16):
    """Student crops, bases, teacher crops, bases (near the student's) and overlap labels."""
    torch.manual_seed(seed)
    c, b = torch.randn(batch, crops, width), torch.randn(batch, bases, width)
    tc, tb = c + 0.3 * torch.randn_like(c), b + 0.3 * torch.randn_like(b)
    labels = overlap_labels(random_crops_inside(batch, crops, 2, 2.0, 1.0), GRID_2D[:bases])
    return c, b, tc, tb, labels


@pytest.mark.parametrize("form", ["cvpr", "extended", "student-bases"])
def test_predicting_a_one_hot_crop_from_orthogonal_bases_costs_nothing(form):
    bases = torch.eye(4, 8).unsqueeze(0)  # four orthogonal base embeddings
    crops = bases[:, [2, 0]]  # crop 0 is base 2's content, crop 1 base 0's
    labels = overlap_labels(GRID_2D[[2, 0]].unsqueeze(0), GRID_2D)
    assert torch.equal(position_logits(crops, bases), labels)
    terms = voco_loss(
        crops,
        bases,
        labels,
        teacher_crop_embeddings=crops,
        teacher_base_embeddings=bases,
        form=form,
    )
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


def test_base_regulariser_pushes_each_base_only_from_the_later_ones_as_the_reference():
    """Pairs i < j with base j detached: the last base gets no gradient, the first does."""
    bases = torch.randn(2, 4, 8, requires_grad=True)
    value = base_regularization(bases)
    b = torch.nn.functional.normalize(bases.detach(), dim=-1)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    expected = torch.stack([(b[:, i] * b[:, j]).sum(-1).relu().pow(2) for i, j in pairs]).mean()
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)
    value.backward()
    assert bases.grad[:, -1].abs().sum() == 0 and bases.grad[:, 0].abs().sum() > 0


def test_cvpr_prediction_averages_both_student_teacher_pairings():
    c, b, tc, tb, labels = embeddings(0)
    terms = voco_loss(c, b, labels, **teacher(tc, tb), form="cvpr")
    averaged = 0.5 * (position_logits(c, tb) + position_logits(tc, b))
    expected = position_loss(averaged, labels, negatives="square")
    assert terms["position"].item() == pytest.approx(expected.item(), abs=1e-6)
    student_only = position_loss(position_logits(c, b), labels, negatives="square")
    assert terms["position"].item() != pytest.approx(student_only.item(), abs=1e-4)
    assert terms["inter_volume"].item() == 0.0


def test_extended_scores_student_crops_against_teacher_bases_plus_the_inter_volume_term():
    c, b, tc, tb, labels = embeddings(1)
    terms = voco_loss(c, b, labels, **teacher(tc, tb), form="extended")
    intra = position_loss(position_logits(c, tb), labels, negatives="log")
    assert terms["position"].item() == pytest.approx(intra.item(), abs=1e-6)
    inter = inter_volume_loss(c, b, tc, tb)
    assert terms["inter_volume"].item() == pytest.approx(inter.item(), abs=1e-6) and inter > 0
    # the intra term gives the student bases no gradient: they learn from inter + regulariser
    bases = b.clone().requires_grad_(True)
    voco_loss(c, bases, labels, **teacher(tc, tb), form="extended", regularization_weight=0.0,
              inter_volume_weight=0.0)["total"].backward()  # fmt: skip
    assert bases.grad.abs().sum() == 0


def test_inter_volume_pairs_each_volume_with_the_next_and_one_volume_with_itself():
    c, b, tc, tb, _ = embeddings(2)
    student = position_logits(c, torch.roll(b, -1, 0))
    teacher = position_logits(tc, torch.roll(tb, -1, 0))
    assert inter_volume_loss(c, b, tc, tb).item() == pytest.approx(
        position_loss(student, teacher).item(), abs=1e-6
    )
    one = inter_volume_loss(c[:1], b[:1], tc[:1], tb[:1])
    own = position_loss(position_logits(c[:1], b[:1]), position_logits(tc[:1], tb[:1]))
    assert one.item() == pytest.approx(own.item(), abs=1e-6) and one > 0
    assert abs(inter_volume_loss(c, b, c, b).item()) < 1e-5  # teacher = student: nothing to learn


def test_student_bases_form_scores_crops_against_the_students_own_bases_without_teacher():
    c, b, _, _, labels = embeddings(5)
    terms = voco_loss(c, b, labels, form="student-bases")
    expected = position_loss(position_logits(c, b), labels, negatives="log")
    assert terms["position"].item() == pytest.approx(expected.item(), abs=1e-6)
    assert terms["inter_volume"].item() == 0.0


@pytest.mark.parametrize("form", ["cvpr", "extended", "student-bases"])
def test_voco_total_is_the_weighted_sum_of_named_terms(form):
    c, b, tc, tb, labels = embeddings(3)
    terms = voco_loss(
        c,
        b,
        labels,
        **teacher(tc, tb),
        form=form,
        regularization_weight=0.5,
        inter_volume_weight=2.0,
    )
    assert set(terms) == {"position", "regularization", "inter_volume", "total"}
    expected = terms["position"] + 0.5 * terms["regularization"] + 2.0 * terms["inter_volume"]
    assert torch.allclose(terms["total"], expected)


@pytest.mark.parametrize("form", ["cvpr", "extended", "student-bases"])
def test_gradients_reach_the_student_only_and_are_finite(form):
    c, b, tc, tb, labels = embeddings(4)
    c, b = c.requires_grad_(True), b.requires_grad_(True)
    tc, tb = tc.requires_grad_(True), tb.requires_grad_(True)
    voco_loss(c, b, labels, **teacher(tc, tb), form=form)["total"].backward()
    assert torch.isfinite(c.grad).all() and c.grad.abs().sum() > 0
    assert torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0
    assert tc.grad is None and tb.grad is None


def test_bad_inputs_raise_value_error():
    c, b, labels = torch.randn(2, 5, 16), torch.randn(2, 4, 16), torch.rand(2, 5, 4)
    with pytest.raises(ValueError):
        voco_loss(c, b, labels[:, :, :3], **teacher(c, b))
    with pytest.raises(ValueError):
        voco_loss(c, b[..., :8], labels, **teacher(c, b[..., :8]))
    with pytest.raises(ValueError):
        voco_loss(c, b, labels, **teacher(c[:1], b))
    with pytest.raises(ValueError, match="needs teacher_crop_embeddings"):
        voco_loss(c, b, labels, form="extended")
    with pytest.raises(ValueError):
        voco_loss(c, b, labels, **teacher(c, b), regularization_weight=-1.0)
    with pytest.raises(ValueError):
        voco_loss(c, b, labels, **teacher(c, b), form="ema-teacher")
    with pytest.raises(ValueError):
        position_loss(labels, labels + 1.0)  # labels outside [0, 1]
    with pytest.raises(ValueError):
        base_regularization(torch.randn(2, 1, 16))
