"""Detection metrics on hand-made boxes whose answers are worked out in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medssl.metrics.detection import (
    Detections,
    average_precision,
    box_iou,
    froc,
    match_detections,
    mean_average_precision,
)

UNIT = [0, 0, 0, 10, 10, 10]
FAR = [50, 50, 50, 60, 60, 60]
OTHER = [20, 20, 20, 30, 30, 30]


def truth(*boxes, labels=None) -> Detections:
    return Detections(boxes=list(boxes), labels=labels or [1] * len(boxes))


def pred(*scored, labels=None) -> Detections:
    """``pred((box, score), ...)`` with class 1 unless labels are given."""
    return Detections(
        boxes=[b for b, _ in scored],
        labels=labels or [1] * len(scored),
        scores=[s for _, s in scored],
    )


def empty() -> Detections:
    return Detections(boxes=np.zeros((0, 6)), labels=[], scores=[])


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 0, 1, 1, 1], [1, 0, 0, 2, 1, 1], 0.0),  # touching faces
        ([0, 0, 0, 2, 2, 2], [0, 0, 0, 1, 1, 1], 1 / 8),  # nested
        ([0, 0, 0, 1, 1, 1], [5, 5, 5, 6, 6, 6], 0.0),  # disjoint
        ([0, 0, 0, 2, 2, 2], [1, 1, 1, 3, 3, 3], 1 / 15),  # corner overlap 1 of 8 + 8 - 1
        ([0, 0, 0, 2, 2, 2], [0, 0, 0, 2, 2, 2], 1.0),
        ([0, 0, 2, 2], [1, 0, 3, 2], 1 / 3),  # 2D: overlap 2, union 6
        ([0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1], 0.0),  # flat boxes have no volume
    ],
)
def test_box_iou_known_values(a, b, expected) -> None:
    iou = box_iou(np.array([a]), torch.tensor([b]))
    assert iou.shape == (1, 1)
    assert iou[0, 0] == pytest.approx(expected)


def test_box_iou_pairwise_shape_and_symmetry() -> None:
    a = np.array([[0, 0, 0, 2, 2, 2], [1, 1, 1, 3, 3, 3], [9, 9, 9, 10, 10, 10]])
    b = a[:2]
    assert box_iou(a, b).shape == (3, 2)
    np.testing.assert_allclose(box_iou(a, b), box_iou(b, a).T)


def test_box_iou_bad_input() -> None:
    with pytest.raises(ValueError, match="max corner"):
        box_iou(np.array([[2, 0, 0, 1, 1, 1]]), np.array([UNIT]))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        box_iou(np.array([[0, 0, 1]]), np.array([UNIT]))
    with pytest.raises(ValueError, match="dimensionality"):
        box_iou(np.array([[0, 0, 1, 1]]), np.array([UNIT]))


def test_perfect_detections() -> None:
    preds = [pred((UNIT, 0.9), (OTHER, 0.8)), pred((FAR, 0.7))]
    truths = [truth(UNIT, OTHER), truth(FAR)]
    assert average_precision(preds, truths, 0.5) == {1: 1.0}
    assert mean_average_precision(preds, truths) == {
        "mAP@0.1": 1.0, "mAP@0.25": 1.0, "mAP@0.5": 1.0, "mAP": 1.0
    }
    result = froc(preds, truths)
    assert result.sensitivities == (1.0,) * 7
    assert result.cpm == 1.0


def test_false_positive_ranked_above_true_positive() -> None:
    # One truth; FP at 0.9 then TP at 0.8: precision at full recall 1/2 -> AP 0.5.
    assert average_precision([pred((FAR, 0.9), (UNIT, 0.8))], [truth(UNIT)])[1] == 0.5
    # Two truths; TP 0.9, FP 0.8, TP 0.7: precisions 1, 1/2, 2/3 -> envelope 1, 2/3, 2/3;
    # AP = (1 + 2/3) / 2.
    ap = average_precision([pred((UNIT, 0.9), (FAR, 0.8), (OTHER, 0.7))], [truth(UNIT, OTHER)])
    assert ap[1] == pytest.approx(5 / 6)


def test_duplicates_are_false_positives() -> None:
    preds = [pred((UNIT, 0.9), ([0, 0, 0, 10, 10, 9], 0.8))]
    matched = match_detections(preds, [truth(UNIT)], 0.1)
    assert matched.is_tp.tolist() == [True, False]
    result = froc(preds, [truth(UNIT)])
    np.testing.assert_allclose(result.curve_fps_per_volume, [0, 0, 1])
    np.testing.assert_allclose(result.curve_sensitivity, [0, 1, 1])


def test_higher_score_takes_the_truth_whatever_the_input_order() -> None:
    # The lower-scored box overlaps better, but the higher score is matched first.
    matched = match_detections(
        [pred(([0, 0, 0, 10, 10, 10], 0.5), ([0, 0, 0, 10, 10, 6], 0.9))], [truth(UNIT)], 0.1
    )
    assert matched.is_tp.tolist() == [False, True]


def test_other_class_is_not_matched() -> None:
    preds = [pred((UNIT, 0.9), labels=[2])]
    ap = average_precision(preds, [truth(UNIT, labels=[1])])
    assert ap[1] == 0.0
    assert math.isnan(ap[2])
    assert froc(preds, [truth(UNIT, labels=[1])]).sensitivities == (0.0,) * 7


def test_iou_threshold_decides() -> None:
    # Overlap 5x10x10 of union 10x10x15 -> IoU 1/3: TP at 0.1 and 0.25, FP at 0.5.
    preds = [pred(([5, 0, 0, 15, 10, 10], 0.9))]
    m = mean_average_precision(preds, [truth(UNIT)])
    assert (m["mAP@0.1"], m["mAP@0.25"], m["mAP@0.5"]) == (1.0, 1.0, 0.0)
    assert m["mAP"] == pytest.approx(2 / 3)


def test_empty_volume_with_false_positives() -> None:
    # Volume 1: a found truth (0.5). Volume 2: no truth, FPs at 0.9 and 0.8.
    # Operating points (FP per volume, sensitivity): (0, 0), (0.5, 0), (1, 0), (1, 1).
    # Rates 1/8, 1/4, 1/2 -> 0; 1, 2, 4, 8 -> 1; CPM 4/7. AP: TP at rank 3 -> 1/3.
    preds = [pred((UNIT, 0.5)), pred((FAR, 0.9), (OTHER, 0.8))]
    truths = [truth(UNIT), Detections(boxes=np.zeros((0, 6)), labels=[])]
    result = froc(preds, truths)
    assert result.sensitivities == (0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0)
    assert result.cpm == pytest.approx(4 / 7)
    assert average_precision(preds, truths)[1] == pytest.approx(1 / 3)


def test_missed_truth_in_volume_without_detections() -> None:
    result = froc([pred((UNIT, 0.9)), empty()], [truth(UNIT), truth(FAR)])
    assert result.sensitivities == (0.5,) * 7


def test_tied_scores_form_one_operating_point() -> None:
    # Both at 0.7: one threshold keeps both, so the TP never comes without the FP.
    result = froc([pred((FAR, 0.7), (UNIT, 0.7))], [truth(UNIT)])
    assert result.sensitivities == (0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0)


def test_no_truths_at_all() -> None:
    preds = [pred((UNIT, 0.9))]
    truths = [Detections(boxes=np.zeros((0, 6)), labels=[])]
    assert math.isnan(average_precision(preds, truths)[1])
    assert math.isnan(mean_average_precision(preds, truths)["mAP"])
    result = froc(preds, truths)
    assert all(math.isnan(s) for s in result.sensitivities)
    assert math.isnan(result.cpm)


def test_2d_boxes() -> None:
    preds = [Detections(boxes=[[0, 0, 4, 4], [10, 10, 12, 12]], labels=[1, 1], scores=[0.6, 0.9])]
    truths = [Detections(boxes=[[0, 0, 4, 4]], labels=[1])]
    assert average_precision(preds, truths)[1] == 0.5


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="one entry per volume"):
        froc([pred((UNIT, 0.9))], [])
    with pytest.raises(ValueError, match="need scores"):
        froc([truth(UNIT)], [truth(UNIT)])
    with pytest.raises(ValueError, match="iou_threshold"):
        average_precision([pred((UNIT, 0.9))], [truth(UNIT)], iou_threshold=0.0)
    with pytest.raises(ValueError, match="labels"):
        average_precision([Detections([UNIT], [1, 1], [0.9])], [truth(UNIT)])
    with pytest.raises(ValueError, match="scores"):
        average_precision([Detections([UNIT], [1], [0.9, 0.1])], [truth(UNIT)])
    with pytest.raises(ValueError, match="fp_rates"):
        froc([pred((UNIT, 0.9))], [truth(UNIT)], fp_rates=[0.0])
    with pytest.raises(ValueError, match="need at least one volume"):
        froc([], [])
