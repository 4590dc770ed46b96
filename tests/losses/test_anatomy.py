"""Positive mining and the matched distillation term (medssl.losses.anatomy)."""

from __future__ import annotations

import pytest
import torch

from medssl.losses import matched_distillation_loss, mine_positives
from medssl.losses.anatomy import global_mean_scale

# four crops: 0 and 2 at one place in volumes 0 and 1; 1 and 3 at another
BODY = torch.tensor([[0.2, 0.2, 0.2], [0.8, 0.8, 0.8], [0.22, 0.2, 0.2], [0.8, 0.75, 0.8]])
GROUPS = torch.tensor([0, 0, 1, 1])


def mine(emb, **kwargs):
    return mine_positives(emb, BODY, GROUPS, emb, BODY, GROUPS, **kwargs)


def test_prior_only_picks_the_nearest_crop_of_another_volume():
    index, keep = mine(torch.randn(4, 8), use_teacher=False)
    assert index.tolist() == [2, 3, 0, 1] and keep.all()


def test_teacher_refines_within_the_radius_and_never_matches_its_own_volume():
    body = torch.tensor([[0.2, 0.2, 0.2], [0.21, 0.2, 0.2], [0.3, 0.2, 0.2], [0.5, 0.2, 0.2]])
    groups = torch.tensor([0, 0, 1, 2])
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    # anchor 0: its twin (crop 1) is in its own volume; crop 3 looks alike but lies outside the
    # radius; crop 2 is the only candidate within it, and lies within the tolerance
    index, keep = mine_positives(
        emb, body, groups, emb, body, groups, tolerance=0.15, search_radius=0.2
    )
    assert index[0] == 2 and keep[0]
    assert (groups[index] != groups).all()
    # a wider radius lets the teacher pick crop 3, which the tolerance then rejects
    index, keep = mine_positives(
        emb, body, groups, emb, body, groups, tolerance=0.15, search_radius=0.5
    )
    assert index[0] == 3 and not keep[0]


def test_pairs_far_apart_in_the_body_are_dropped():
    _, keep = mine(torch.eye(4), use_prior=False)  # teacher alone: all kept
    assert keep.all()
    far_body = BODY.clone()
    far_body[3] = torch.tensor([0.2, 0.9, 0.9])
    _index, keep = mine_positives(
        torch.eye(4), far_body, GROUPS, torch.eye(4), far_body, GROUPS, tolerance=0.1
    )
    assert keep.tolist() == [True, False, True, False]


def test_a_pool_of_one_volume_keeps_nothing():
    _index, keep = mine_positives(
        torch.randn(2, 4), BODY[:2], GROUPS[:2], torch.randn(2, 4), BODY[:2], GROUPS[:2]
    )
    assert not keep.any()


def test_mining_is_invariant_to_the_pool_order():
    emb = torch.randn(4, 8)
    perm = torch.tensor([3, 1, 0, 2])
    index, keep = mine(emb)
    index_p, keep_p = mine_positives(emb, BODY, GROUPS, emb[perm], BODY[perm], GROUPS[perm])
    assert torch.equal(perm[index_p], index) and torch.equal(keep_p, keep)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="body coordinates"):
        mine_positives(torch.randn(4, 8), BODY[:, :2], GROUPS, torch.randn(4, 8), BODY, GROUPS)
    with pytest.raises(ValueError, match="neither"):
        mine(torch.randn(4, 8), use_prior=False, use_teacher=False)
    with pytest.raises(ValueError, match="tolerance"):
        mine(torch.randn(4, 8), tolerance=0.0)


def test_matched_distillation_counts_only_kept_pairs_and_is_minimal_at_its_target():
    student = torch.randn(4, 6)
    teacher = torch.randn(4, 6)
    center = torch.zeros(6)
    keep = torch.tensor([True, False, True, False])
    full = matched_distillation_loss(student, teacher, keep, center)
    changed = student.clone()
    changed[1] += 10.0  # a dropped pair does not count
    assert torch.equal(matched_distillation_loss(changed, teacher, keep, center), full)
    none = matched_distillation_loss(student, teacher, torch.zeros(4, dtype=torch.bool), center)
    assert float(none) == 0.0
    # student logits equal to the teacher's sharpened log-targets give the entropy, the minimum
    t = torch.randn(4, 6)
    best = matched_distillation_loss(t / 0.04 * 0.1, t, keep, center)
    assert float(best) <= float(matched_distillation_loss(torch.randn(4, 6), t, keep, center))
    with pytest.raises(ValueError, match="keep"):
        matched_distillation_loss(student, teacher, keep.float(), center)


def test_global_mean_scale_is_one_on_a_single_process():
    assert float(global_mean_scale(torch.tensor(5.0))) == 1.0
    assert float(global_mean_scale(torch.tensor(0.0))) == 0.0
