"""Detection metrics for axis-aligned boxes in 2D and 3D: IoU, AP/mAP and FROC (LUNA16 CPM).

Boxes are ``[x0, y0, x1, y1]`` (2D) or ``[x0, y0, z0, x1, y1, z1]`` (3D) in voxel or mm
coordinates, corners continuous (a box's size is ``x1 - x0``; touching boxes do not overlap).

One matching rule serves both AP and FROC, per volume and per class: detections are visited
by descending score (ties keep input order); each takes the still unmatched truth of its
class with the highest IoU, and is a true positive when that IoU is ``>= iou_threshold``;
otherwise it is a false positive (so a duplicate of an already found object is a FP).

- **AP** per class: all-point interpolation (PASCAL VOC 2010 onwards; Everingham et al.,
  IJCV 2010): the area under the precision-recall curve after making precision
  monotone non-increasing, detections of all volumes pooled. NaN for a class without truths.
- **FROC** (Setio et al., "Validation, comparison, and combination of algorithms for automatic
  detection of pulmonary nodules in CT images: the LUNA16 challenge", MedIA 2017):
  detections of all volumes and classes pooled and thresholded by score; at each rate ``r``
  of false positives per volume the sensitivity is the one of the lowest score threshold
  that yields at most ``r * n_volumes`` false positives (a step curve, no interpolation);
  the CPM is the mean over the rates 1/8 ... 8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
AP_IOU_THRESHOLDS = (0.1, 0.25, 0.5)


def _as_numpy(x: np.ndarray | Tensor | Sequence, dtype: type, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_boxes(boxes: np.ndarray | Tensor | Sequence, name: str) -> np.ndarray:
    b = _as_numpy(boxes, np.float64, name)
    if b.size == 0:
        return b.reshape(0, b.shape[-1] if b.ndim == 2 else 6)
    if b.ndim != 2 or b.shape[1] not in (4, 6):
        raise ValueError(f"{name}: expected boxes [N, 4] (2D) or [N, 6] (3D), got {b.shape}")
    d = b.shape[1] // 2
    if not np.isfinite(b).all():
        raise ValueError(f"{name}: box coordinates must be finite")
    if (b[:, d:] < b[:, :d]).any():
        raise ValueError(f"{name}: every box needs max corner >= min corner, got {b.tolist()}")
    return b


def box_iou(boxes_a: np.ndarray | Tensor, boxes_b: np.ndarray | Tensor) -> np.ndarray:
    """Pairwise IoU ``[N, M]`` of boxes ``[N, 2d]`` and ``[M, 2d]`` (d = 2 or 3).

    Two empty (zero-size) boxes have IoU 0.
    """
    a, b = _check_boxes(boxes_a, "boxes_a"), _check_boxes(boxes_b, "boxes_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"boxes_a and boxes_b: same dimensionality needed, got {a.shape}, {b.shape}")
    d = a.shape[1] // 2
    lo = np.maximum(a[:, None, :d], b[None, :, :d])
    hi = np.minimum(a[:, None, d:], b[None, :, d:])
    inter = np.clip(hi - lo, 0.0, None).prod(axis=-1)
    vol_a = (a[:, d:] - a[:, :d]).prod(axis=-1)
    vol_b = (b[:, d:] - b[:, :d]).prod(axis=-1)
    union = vol_a[:, None] + vol_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass(frozen=True)
class Detections:
    """Boxes of one volume: ``boxes [N, 2d]``, integer ``labels [N]``, ``scores [N]`` (predictions).

    Truths leave ``scores`` as None.
    """

    boxes: np.ndarray | Tensor | Sequence
    labels: np.ndarray | Tensor | Sequence
    scores: np.ndarray | Tensor | Sequence | None = None

    def arrays(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validated ``(boxes, labels, scores)``; scores are zeros when not given."""
        boxes = _check_boxes(self.boxes, f"{name}.boxes")
        labels = _as_numpy(self.labels, np.int64, f"{name}.labels").reshape(-1)
        if len(labels) != len(boxes):
            raise ValueError(f"{name}: {len(boxes)} boxes but {len(labels)} labels")
        if self.scores is None:
            return boxes, labels, np.zeros(len(boxes))
        scores = _as_numpy(self.scores, np.float64, f"{name}.scores").reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"{name}: {len(boxes)} boxes but {len(scores)} scores")
        return boxes, labels, scores


@dataclass
class _Matched:
    """Every detection of a set of volumes: score, label, true-positive flag; truths per class."""

    scores: np.ndarray
    labels: np.ndarray
    is_tp: np.ndarray
    n_truths: dict[int, int] = field(default_factory=dict)
    n_volumes: int = 0


def _match_volume(
    pred: tuple[np.ndarray, np.ndarray, np.ndarray],
    truth: tuple[np.ndarray, np.ndarray, np.ndarray],
    iou_threshold: float,
) -> np.ndarray:
    """True-positive flag per detection (input order) by greedy matching within each class."""
    p_boxes, p_labels, p_scores = pred
    t_boxes, t_labels, _ = truth
    is_tp = np.zeros(len(p_boxes), dtype=bool)
    if len(p_boxes) and len(t_boxes) and p_boxes.shape[1] != t_boxes.shape[1]:
        raise ValueError(f"pred and truth boxes differ in dimensionality: {p_boxes.shape}, "
                         f"{t_boxes.shape}")
    for label in np.unique(p_labels):
        p_idx = np.flatnonzero(p_labels == label)
        t_idx = np.flatnonzero(t_labels == label)
        if len(t_idx) == 0:
            continue
        iou = box_iou(p_boxes[p_idx], t_boxes[t_idx])
        taken = np.zeros(len(t_idx), dtype=bool)
        for row in np.argsort(-p_scores[p_idx], kind="stable"):
            candidates = np.where(taken, -1.0, iou[row])
            best = int(np.argmax(candidates))
            if candidates[best] >= iou_threshold:
                taken[best] = True
                is_tp[p_idx[row]] = True
    return is_tp


def match_detections(
    preds: Sequence[Detections], truths: Sequence[Detections], iou_threshold: float
) -> _Matched:
    """Match every volume's detections to its truths and pool the result over volumes."""
    if len(preds) != len(truths):
        raise ValueError(f"preds and truths: one entry per volume each, got {len(preds)} and "
                         f"{len(truths)}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    scores, labels, flags = [], [], []
    n_truths: dict[int, int] = {}
    for i, (pred, truth) in enumerate(zip(preds, truths)):
        if pred.scores is None:
            raise ValueError(f"preds[{i}]: predictions need scores, got None")
        p = pred.arrays(f"preds[{i}]")
        t = truth.arrays(f"truths[{i}]")
        flags.append(_match_volume(p, t, iou_threshold))
        scores.append(p[2])
        labels.append(p[1])
        for label, count in zip(*np.unique(t[1], return_counts=True)):
            n_truths[int(label)] = n_truths.get(int(label), 0) + int(count)
    cat = np.concatenate
    return _Matched(
        scores=cat(scores) if scores else np.zeros(0),
        labels=cat(labels) if labels else np.zeros(0, dtype=np.int64),
        is_tp=cat(flags) if flags else np.zeros(0, dtype=bool),
        n_truths=n_truths,
        n_volumes=len(preds),
    )


def _all_point_ap(scores: np.ndarray, is_tp: np.ndarray, n_truths: int) -> float:
    if n_truths == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(is_tp[order])
    precision = tp / np.arange(1, len(order) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(envelope[is_tp[order]].sum() / n_truths)


def average_precision(
    preds: Sequence[Detections], truths: Sequence[Detections], iou_threshold: float = 0.1
) -> dict[int, float]:
    """All-point AP per class (every class seen in truths or predictions; NaN without truths)."""
    m = match_detections(preds, truths, iou_threshold)
    classes = sorted(set(m.n_truths) | {int(c) for c in np.unique(m.labels)})
    return {
        c: _all_point_ap(m.scores[m.labels == c], m.is_tp[m.labels == c], m.n_truths.get(c, 0))
        for c in classes
    }


def mean_average_precision(
    preds: Sequence[Detections],
    truths: Sequence[Detections],
    iou_thresholds: Sequence[float] = AP_IOU_THRESHOLDS,
) -> dict[str, float]:
    """``{"mAP@<t>": mean AP over classes with truths, ..., "mAP": mean over thresholds}``."""
    if not iou_thresholds:
        raise ValueError("iou_thresholds: need at least one threshold, got none")
    out: dict[str, float] = {}
    for t in iou_thresholds:
        aps = [v for v in average_precision(preds, truths, t).values() if not math.isnan(v)]
        out[f"mAP@{t:g}"] = float(np.mean(aps)) if aps else math.nan
    values = [v for v in out.values() if not math.isnan(v)]
    out["mAP"] = float(np.mean(values)) if values else math.nan
    return out


@dataclass(frozen=True)
class FROC:
    """Sensitivity at each FP rate, their mean (CPM), and the whole step curve for plotting."""

    fp_rates: tuple[float, ...]
    sensitivities: tuple[float, ...]
    cpm: float
    curve_fps_per_volume: np.ndarray
    curve_sensitivity: np.ndarray


def froc(
    preds: Sequence[Detections],
    truths: Sequence[Detections],
    iou_threshold: float = 0.1,
    fp_rates: Sequence[float] = FROC_FP_RATES,
) -> FROC:
    """FROC over volumes (detections pooled); sensitivities NaN when there are no truths."""
    if not fp_rates or any(r <= 0 for r in fp_rates):
        raise ValueError(f"fp_rates must be a non-empty list of rates > 0, got {list(fp_rates)}")
    m = match_detections(preds, truths, iou_threshold)
    if m.n_volumes == 0:
        raise ValueError("preds: need at least one volume, got none")
    n_truths = sum(m.n_truths.values())
    order = np.argsort(-m.scores, kind="stable")
    scores, is_tp = m.scores[order], m.is_tp[order]
    # A threshold keeps all detections of equal score, so operating points sit at group ends.
    ends = np.flatnonzero(np.append(scores[1:] != scores[:-1], True)) if len(scores) else []
    tp = np.concatenate([[0], np.cumsum(is_tp)[ends]])
    fp = np.concatenate([[0], np.cumsum(~is_tp)[ends]])
    sensitivity = tp / n_truths if n_truths else np.full(len(tp), math.nan)
    fps_per_volume = fp / m.n_volumes
    at_rates = tuple(
        float(sensitivity[np.flatnonzero(fps_per_volume <= r)[-1]]) for r in fp_rates
    )
    return FROC(
        fp_rates=tuple(float(r) for r in fp_rates),
        sensitivities=at_rates,
        cpm=float(np.mean(at_rates)),
        curve_fps_per_volume=fps_per_volume,
        curve_sensitivity=sensitivity,
    )

