"""Classification metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medssl.metrics.classification import auroc, classification_metrics


def test_auroc_known_values():
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    # positives 0.4, 0.8; negatives 0.4, 0.1: pairs (0.4>0.4 tie .5)(0.4>0.1)(0.8>0.4)(0.8>0.1) = 3.5/4
    assert auroc(np.array([0.4, 0.8, 0.4, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(0.875)
    assert math.isnan(auroc(np.array([0.3, 0.4]), np.array([1, 1])))


def test_multi_class_metrics():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    targets = np.array([0, 1, 2, 1])
    m = classification_metrics(probs, targets)
    assert m["accuracy"] == 0.75
    # class 0: pos .7 vs negs .1,.2,.6 -> 1.0; class 1: pos .8,.3 vs .2,.3 -> (1+1+.5+1)/4; class 2: 1.0
    assert m["auroc"] == pytest.approx((1.0 + 0.875 + 1.0) / 3)
    # F1: class0 tp1 fp1 -> 2/3; class1 tp1 fn1 -> 2/3; class2 tp1 -> 1
    assert m["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_multi_label_metrics():
    probs = np.array([[0.9, 0.8], [0.2, 0.7], [0.6, 0.1]])
    targets = np.array([[1, 1], [0, 1], [0, 0]])
    m = classification_metrics(probs, targets, multi_label=True)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["auroc"] == pytest.approx((1.0 + 1.0) / 2)


@pytest.mark.parametrize(
    ("probs", "targets", "multi", "match"),
    [
        (np.zeros(3), np.zeros(3), False, r"\[N, C\]"),
        (np.zeros((3, 2)), np.array([0, 2, 1]), False, "0..1"),
        (np.zeros((3, 2)), np.zeros(3), True, r"\[N, C\]"),
    ],
)
def test_bad_input(probs, targets, multi, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(probs, targets, multi_label=multi)
