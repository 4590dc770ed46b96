"""Segmentation metrics against values counted by hand on tiny label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medssl.metrics.segmentation import image_diagonal_mm, segmentation_metrics, summarise

SPACING_3D = (2.0, 1.0, 1.0)


def two_cubes() -> tuple[np.ndarray, np.ndarray]:
    """Two 4^3 cubes of class 1, the prediction shifted 2 voxels (4 mm) along axis 0.

    |A| = |B| = 64, overlap 2*4*4 = 32 -> Dice 0.5.
    Surface of A: 56 voxels. Distances to B's surface (mm): 24 voxels on it (0), the 4 inner
    voxels of A's far face are 1 voxel from B's ring along a 1 mm axis (1), the 12 ring voxels
    one slice back are 1 slice (2 mm) from B's near face (2), A's near face is 2 slices (4 mm)
    away (4). Sorted: 24x0, 4x1, 12x2, 16x4 -> 95th percentile 4 mm, both ways by symmetry.
    NSD: within 2 mm 40/56 per side -> 5/7; within 1.5 mm 28/56 -> 0.5; within 4 mm all -> 1.
    """
    truth = np.zeros((10, 10, 10), dtype=np.int64)
    truth[2:6, 2:6, 2:6] = 1
    pred = np.zeros_like(truth)
    pred[4:8, 2:6, 2:6] = 1
    return pred, truth


def test_offset_cubes_anisotropic_spacing() -> None:
    pred, truth = two_cubes()
    m = segmentation_metrics(pred, truth, labels=[1], spacing=SPACING_3D, nsd_tolerance_mm=2.0)[1]
    assert m["dice"] == pytest.approx(0.5)
    assert m["hd95"] == pytest.approx(4.0)
    assert m["nsd"] == pytest.approx(5 / 7)


@pytest.mark.parametrize(("tolerance", "expected"), [(1.5, 0.5), (2.0, 5 / 7), (4.0, 1.0)])
def test_nsd_fraction_by_tolerance(tolerance: float, expected: float) -> None:
    pred, truth = two_cubes()
    m = segmentation_metrics(pred, truth, [1], SPACING_3D, nsd_tolerance_mm=tolerance)
    assert m[1]["nsd"] == pytest.approx(expected)


def test_spacing_scales_hd95() -> None:
    pred, truth = two_cubes()
    m = segmentation_metrics(pred, truth, [1], spacing=(1.0, 1.0, 1.0))[1]
    assert m["hd95"] == pytest.approx(2.0)
    assert m["dice"] == pytest.approx(0.5)


def test_torch_input_and_per_class_tolerance() -> None:
    pred, truth = two_cubes()
    pred[0:2, 0:2, 0:2] = 2
    truth[0:2, 0:2, 0:2] = 2
    m = segmentation_metrics(
        torch.from_numpy(pred), torch.from_numpy(truth), [1, 2], SPACING_3D, [1.5, 2.0]
    )
    assert m[1]["nsd"] == pytest.approx(0.5)
    assert m[2] == pytest.approx({"dice": 1.0, "hd95": 0.0, "nsd": 1.0})


def test_float_label_maps_with_whole_numbers_are_accepted() -> None:
    pred, truth = two_cubes()
    m = segmentation_metrics(pred.astype(np.float32), torch.from_numpy(truth).float(), [1],
                             SPACING_3D)
    assert m[1]["dice"] == pytest.approx(0.5)


def test_offset_squares_2d() -> None:
    """4x4 squares, prediction one column (3 mm) over: overlap 12 -> Dice 24/32.

    Surface of each: 12 pixels; 6 on the other surface (0), 2 one row (1 mm) away, 4 one
    column (3 mm) away -> HD95 3 mm; NSD within 1 mm = 8/12.
    """
    truth = np.zeros((8, 9), dtype=np.int32)
    truth[2:6, 2:6] = 1
    pred = np.zeros_like(truth)
    pred[2:6, 3:7] = 1
    m = segmentation_metrics(pred, truth, [1], spacing=(1.0, 3.0), nsd_tolerance_mm=1.0)[1]
    assert m["dice"] == pytest.approx(0.75)
    assert m["hd95"] == pytest.approx(3.0)
    assert m["nsd"] == pytest.approx(2 / 3)


def test_empty_prediction_scores_worst() -> None:
    _, truth = two_cubes()
    m = segmentation_metrics(np.zeros_like(truth), truth, [1], SPACING_3D)[1]
    assert m == {"dice": 0.0, "hd95": pytest.approx(math.sqrt(18**2 + 9**2 + 9**2)), "nsd": 0.0}


def test_empty_truth_scores_worst_with_given_distance() -> None:
    pred, truth = two_cubes()
    m = segmentation_metrics(pred, np.zeros_like(truth), [1], SPACING_3D, missing_distance_mm=50)
    assert m[1] == {"dice": 0.0, "hd95": 50.0, "nsd": 0.0}


def test_both_empty_is_nan_and_summary_skips_it() -> None:
    pred, truth = two_cubes()
    both_empty = segmentation_metrics(np.zeros_like(pred), np.zeros_like(truth), [1], SPACING_3D)
    assert all(math.isnan(v) for v in both_empty[1].values())
    scored = segmentation_metrics(pred, truth, [1], SPACING_3D)
    summary = summarise([scored, both_empty], names={1: "liver"})
    assert summary["liver/dice"] == pytest.approx(0.5)
    assert summary["liver/hd95"] == pytest.approx(4.0)
    assert summary["mean/dice"] == pytest.approx(0.5)


def test_summarise_means_per_class_and_overall() -> None:
    cases = [
        {1: {"dice": 0.5, "hd95": 2.0, "nsd": 1.0}, 2: {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}},
        {1: {"dice": 0.7, "hd95": 4.0, "nsd": 0.5}, 2: {"dice": math.nan, "hd95": math.nan,
                                                        "nsd": math.nan}},
    ]
    s = summarise(cases, {1: "liver", 2: "tumour"})
    assert s["liver/dice"] == pytest.approx(0.6)
    assert s["tumour/dice"] == pytest.approx(1.0)
    assert s["mean/dice"] == pytest.approx(0.8)
    assert s["mean/hd95"] == pytest.approx(1.5)
    all_nan = summarise([cases[1]], {1: "liver", 2: "tumour"})
    assert math.isnan(all_nan["tumour/nsd"])
    assert all_nan["mean/nsd"] == pytest.approx(0.5)


def test_summarise_bad_input() -> None:
    with pytest.raises(ValueError, match="per_case"):
        summarise([], {1: "liver"})
    with pytest.raises(ValueError, match="names"):
        summarise([{1: {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}}], {2: "spleen"})


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same shape"):
        segmentation_metrics(np.zeros((4, 4, 4), int), np.zeros((4, 4, 5), int), [1], SPACING_3D)


def test_spacing_length_and_value_raise() -> None:
    pred, truth = two_cubes()
    with pytest.raises(ValueError, match="spacing"):
        segmentation_metrics(pred, truth, [1], spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        segmentation_metrics(pred, truth, [1], spacing=(1.0, 0.0, 1.0))


def test_other_bad_input_raises() -> None:
    pred, truth = two_cubes()
    with pytest.raises(ValueError, match="pred: label maps must hold integer"):
        segmentation_metrics(pred * 0.5, truth, [1], SPACING_3D)
    with pytest.raises(ValueError, match="labels"):
        segmentation_metrics(pred, truth, [], SPACING_3D)
    with pytest.raises(ValueError, match="nsd_tolerance_mm"):
        segmentation_metrics(pred, truth, [1, 2], SPACING_3D, nsd_tolerance_mm=[1.0])
    with pytest.raises(ValueError, match="2D or 3D"):
        segmentation_metrics(pred[0, 0], truth[0, 0], [1], (1.0,))


def test_image_diagonal() -> None:
    assert image_diagonal_mm((4, 5), (1.0, 1.0)) == pytest.approx(5.0)
