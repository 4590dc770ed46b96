"""DINO / iBOT self-distillation (medssl.losses.distillation)."""

from __future__ import annotations

import pytest
import torch

from medssl.losses import (
    DINOLoss,
    dino_loss,
    distillation_cross_entropy,
    ibot_patch_loss,
    teacher_probabilities,
    updated_center,
)
from medssl.losses.distillation import teacher_momentum, warmup_teacher_temperature

T_S, T_T = 0.1, 0.04


def student_matching(teacher: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Student logits whose softmax at T_S equals the teacher's centred, sharpened softmax."""
    return T_S * torch.log_softmax((teacher - center) / T_T, dim=-1)


def test_loss_is_near_zero_when_student_equals_a_sharpened_one_hot_teacher():
    teacher = torch.zeros(8, 16)
    teacher[torch.arange(8), torch.arange(8)] = 1.0  # sharpening at 0.04 makes it ~one-hot
    center = torch.zeros(16)
    student = student_matching(teacher, center)
    assert dino_loss([student, student], [teacher, teacher], center).item() < 1e-6


def test_student_equal_to_the_sharpened_teacher_is_a_stationary_point():
    """Cross-entropy = entropy(teacher) + KL; the KL part and the gradient vanish at equality."""
    teacher, center = torch.randn(6, 10), torch.randn(10) * 0.1
    student = student_matching(teacher, center).requires_grad_()
    loss = dino_loss([student, student], [teacher, teacher], center)
    p = teacher_probabilities(teacher, center, T_T)
    entropy = -(p * torch.log_softmax((teacher - center) / T_T, dim=-1)).sum(1).mean()
    assert loss.item() == pytest.approx(entropy.item(), abs=1e-5)
    loss.backward()
    assert student.grad.abs().max().item() < 1e-6
    other = torch.randn(6, 10)
    assert dino_loss([other, other], [teacher, teacher], center) > loss


def test_same_view_pairs_are_skipped_and_local_crops_only_learn():
    t = [torch.randn(4, 8) for _ in range(2)]
    s = [torch.randn(4, 8) for _ in range(4)]
    c = torch.zeros(8)

    def ce(i, v):
        return distillation_cross_entropy(s[v], teacher_probabilities(t[i], c, T_T), T_S).mean()

    pairs = [(0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]
    expected = torch.stack([ce(i, v) for i, v in pairs]).mean()
    assert torch.allclose(dino_loss(s, t, c), expected, atol=1e-6)


def test_teacher_receives_no_gradient():
    teacher = torch.randn(4, 8, requires_grad=True)
    student = torch.randn(4, 8, requires_grad=True)
    dino_loss([student, student * 2], [teacher, teacher * 0.5], torch.zeros(8)).backward()
    assert teacher.grad is None and torch.isfinite(student.grad).all()


def test_center_update_matches_the_momentum_mean_of_all_teacher_rows():
    center = torch.randn(8)
    crops = [torch.randn(5, 8), torch.randn(5, 8)]
    mean = torch.cat(crops).mean(0)
    assert torch.allclose(updated_center(center, crops, 0.9), 0.9 * center + 0.1 * mean, atol=1e-6)
    assert torch.allclose(updated_center(center, torch.cat(crops), 0.0), mean, atol=1e-6)
    patches = torch.randn(2, 3, 8)
    assert torch.allclose(
        updated_center(center, patches, 0.5),
        0.5 * center + 0.5 * patches.reshape(-1, 8).mean(0),
        atol=1e-6,
    )


def test_dino_module_scores_with_the_old_center_then_updates_it():
    module = DINOLoss(8, center_momentum=0.8)
    teacher = [torch.randn(4, 8) + 3.0, torch.randn(4, 8) + 3.0]
    student = [torch.randn(4, 8), torch.randn(4, 8)]
    expected = dino_loss(student, teacher, torch.zeros(8))
    assert torch.allclose(module(student, teacher), expected)
    assert torch.allclose(module.center, 0.2 * torch.cat(teacher).mean(0), atol=1e-6)
    assert "center" in module.state_dict()


def test_dino_module_accepts_a_scheduled_teacher_temperature():
    module = DINOLoss(8)
    teacher = [torch.randn(4, 8), torch.randn(4, 8)]
    student = [torch.randn(4, 8), torch.randn(4, 8)]
    expected = dino_loss(student, teacher, torch.zeros(8), teacher_temperature=0.07)
    assert torch.allclose(module(student, teacher, teacher_temperature=0.07), expected)


def test_teacher_temperature_warms_up_linearly_then_stays():
    values = [warmup_teacher_temperature(step, 0.04, 0.07, 3) for step in range(5)]
    assert values == pytest.approx([0.04, 0.05, 0.06, 0.07, 0.07])
    assert warmup_teacher_temperature(0, 0.04, 0.07, 0) == 0.07  # no warm-up
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_teacher_temperature(0, 0.04, 0.07, -1)


def test_teacher_momentum_rises_on_a_cosine_from_base_to_one():
    values = [teacher_momentum(step, 4, 0.996) for step in range(6)]
    assert values[0] == pytest.approx(0.996) and values[4] == values[5] == pytest.approx(1.0)
    assert values[2] == pytest.approx(0.998)  # halfway: half the gap to 1
    assert values[:5] == sorted(set(values[:5]))  # strictly rising until the end
    assert teacher_momentum(10, float("inf"), 0.9) == 0.9  # no finite schedule: constant
    with pytest.raises(ValueError, match="momentum"):
        teacher_momentum(0, 4, 1.5)


def test_ibot_counts_only_masked_patches_and_images_without_masks_add_zero():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 6, 10), torch.randn(3, 6, 10)
    masks = torch.zeros(3, 6, dtype=torch.bool)
    masks[0, :2] = True
    masks[1, 4] = True  # image 2 has no masked patch
    center = torch.zeros(10)
    loss = ibot_patch_loss(student, teacher, masks, center)
    per_patch = distillation_cross_entropy(
        student, teacher_probabilities(teacher, center, T_T), T_S
    )
    expected = (per_patch[0, :2].mean() + per_patch[1, 4] + 0.0) / 3
    assert torch.allclose(loss, expected, atol=1e-6)
    changed = student.clone()
    changed[~masks] = torch.randn(int((~masks).sum()), 10)
    assert torch.allclose(ibot_patch_loss(changed, teacher, masks, center), loss)


@pytest.mark.parametrize(
    "call",
    [
        lambda: dino_loss([torch.randn(4, 8)], [torch.randn(4, 8)], torch.zeros(8)),
        lambda: dino_loss([torch.randn(4, 8)] * 2, [], torch.zeros(8)),
        lambda: dino_loss([torch.randn(4, 8)] * 2, [torch.randn(4, 7)], torch.zeros(7)),
        lambda: dino_loss([torch.randn(4, 8)] * 2, [torch.randn(4, 8)], torch.zeros(7)),
        lambda: dino_loss(
            [torch.randn(4, 8)] * 2, [torch.randn(4, 8)], torch.zeros(8), teacher_temperature=0.0
        ),
        lambda: ibot_patch_loss(
            torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.ones(2, 3), torch.zeros(4)
        ),
        lambda: ibot_patch_loss(
            torch.randn(2, 3, 4),
            torch.randn(2, 4, 4),
            torch.ones(2, 3, dtype=torch.bool),
            torch.zeros(4),
        ),
        lambda: updated_center(torch.zeros(4), torch.randn(2, 4), momentum=1.5),
        lambda: DINOLoss(0),
    ],
)
def test_bad_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
