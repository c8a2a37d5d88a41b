"""Curves behind I-AUC and PRO, for plotting: exact image-level ROC and PR, and the PRO curve at a grid of
false-positive rates (the exact PRO value is :func:`uniadc.metrics.pro`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _sorted_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be (N,), got {scores.shape} and {labels.shape}")
    if labels.all() or not labels.any():
        raise ValueError("labels need both classes for a curve")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # one point per distinct threshold
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return s[last], tp, fp


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` from (0, 0) to (1, 1), one point per distinct score."""
    thresholds, tp, fp = _sorted_counts(scores, labels)
    fpr = np.r_[0.0, fp / fp[-1]]
    tpr = np.r_[0.0, tp / tp[-1]]
    return fpr, tpr, np.r_[np.inf, thresholds]


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(recall, precision, thresholds)``, recall increasing, one point per distinct score."""
    thresholds, tp, fp = _sorted_counts(scores, labels)
    return tp / tp[-1], tp / (tp + fp), thresholds


def pro_curve(
    anomaly_maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, points: int = 61
) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, pro)`` at ``points`` false-positive rates in [0, fpr_limit]: at each, the threshold is the
    normal-pixel quantile giving that FPR, and PRO the mean over ground-truth regions (8-connected, per image)
    of the fraction of the region at or above it."""
    maps, masks = np.asarray(anomaly_maps, np.float64), np.asarray(masks, bool)
    if maps.shape != masks.shape or not masks.any() or masks.all():
        raise ValueError("masks must match the maps and hold both anomalous and normal pixels")
    values, region_ids, offset = [], [], 0
    for m, g in zip(maps, masks, strict=True):
        lab, n = ndimage.label(g, structure=np.ones((3, 3), bool))
        if n:
            values.append(m[lab > 0])
            region_ids.append(lab[lab > 0] - 1 + offset)
            offset += n
    vals, ids = np.concatenate(values), np.concatenate(region_ids)
    sizes = np.bincount(ids, minlength=offset).astype(np.float64)
    normal = np.sort(maps[~masks])
    fpr = np.linspace(0.0, fpr_limit, points)
    pro = np.empty(points)
    for i, f in enumerate(fpr):
        above = int(round(f * normal.size))
        t = np.inf if above == 0 else normal[normal.size - above]
        pro[i] = float(np.mean(np.bincount(ids, weights=(vals >= t), minlength=offset) / sizes))
    return fpr, pro
