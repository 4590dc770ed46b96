"""Classification metrics from predicted probabilities: accuracy, macro AUROC, macro F1.

AUROC is the Mann-Whitney statistic (Hanley and McNeil 1982): the probability that a random
positive scores above a random negative, ties counting one half. A class without both
positives and negatives in the evaluated set has no AUROC (NaN), and the macro mean skips it.
"""

from __future__ import annotations

import math

import numpy as np


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores [N]`` for binary ``positive [N]``; NaN without both kinds."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive).astype(bool)
    if scores.shape != positive.shape or scores.ndim != 1:
        raise ValueError(f"scores and positive must be [N] alike, got {scores.shape} and {positive.shape}")
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(probs: np.ndarray, targets: np.ndarray, multi_label: bool = False, threshold: float = 0.5) -> dict[str, float]:
    """``{"accuracy", "auroc", "f1"}`` (macro means over classes) of ``probs [N, C]``.

    ``targets``: class indices ``[N]`` (multi-class) or multi-hot ``[N, C]`` (multi-label, where
    accuracy is the share of cases whose whole label set is right at ``threshold``).
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {probs.shape}")
    n, c = probs.shape
    if multi_label:
        if targets.shape != (n, c):
            raise ValueError(f"multi-label targets must be [N, C] = {(n, c)}, got {targets.shape}")
        onehot = targets.astype(bool)
        predicted = probs >= threshold
        accuracy = float((predicted == onehot).all(axis=1).mean()) if n else math.nan
    else:
        if targets.shape != (n,) or (n and (targets.min() < 0 or targets.max() >= c)):
            raise ValueError(f"multi-class targets must be [N] in 0..{c - 1}, got shape {targets.shape}")
        onehot = np.eye(c, dtype=bool)[targets.astype(int)]
        predicted = np.eye(c, dtype=bool)[probs.argmax(axis=1)] if n else onehot
        accuracy = float((probs.argmax(axis=1) == targets).mean()) if n else math.nan
    aucs = [auroc(probs[:, k], onehot[:, k]) for k in range(c)]
    f1s = []
    for k in range(c):
        tp = int((predicted[:, k] & onehot[:, k]).sum())
        fp = int((predicted[:, k] & ~onehot[:, k]).sum())
        fn = int((~predicted[:, k] & onehot[:, k]).sum())
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    finite = [a for a in aucs if not math.isnan(a)]
    return {
        "accuracy": accuracy,
        "auroc": float(np.mean(finite)) if finite else math.nan,
        "f1": float(np.mean(f1s)) if f1s else math.nan,
    }
