"""Per-category metrics and confusion matrices.

For defect category c the detection metrics (I-AUC, P-AUC, PRO) use the normal test images and the images of
category c only, so each row says how well *that* defect is found against normal parts. ``acc`` is the
fraction of category-c images whose image class is c (its recall), ``iou`` the pixel IoU of class c over all
single-label test images. The ``normal`` row has no detection metrics; its ``acc`` is the fraction of normal
images called normal and its ``iou`` the IoU of the normal class. Images labelled -1 (several categories) count
in no row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from uniadc.metrics import image_auc, image_classes, pixel_auc, pro

COLUMNS = ("i_auc", "p_auc", "pro", "acc", "iou")


def pixel_confusion(
    predicted: np.ndarray, gt_class_maps: np.ndarray, size: int, valid: np.ndarray | None = None
) -> np.ndarray:
    """``(size, size)`` pixel counts over the (``valid``) pixels, rows = true class, columns = predicted."""
    out = np.zeros(size * size, np.int64)
    for i, (p, g) in enumerate(zip(predicted, gt_class_maps, strict=True)):
        if valid is not None:
            p, g = p[valid[i]], g[valid[i]]
        out += np.bincount(
            g.astype(np.int64).ravel() * size + p.astype(np.int64).ravel(), minlength=size * size
        )
    return out.reshape(size, size)


def confusion_matrix(
    labels: np.ndarray, predicted: np.ndarray, num_rows: int, num_columns: int
) -> np.ndarray:
    """Image counts, rows = true class (0 normal .. K), columns = predicted class (0 .. K, plus "other" when
    the model has it); labels < 0 are left out."""
    labels, predicted = np.asarray(labels, np.int64), np.asarray(predicted, np.int64)
    keep = labels >= 0
    if predicted.size and (predicted.min() < 0 or predicted.max() >= num_columns):
        raise ValueError(
            f"predicted classes must be in [0, {num_columns}), got [{predicted.min()}, {predicted.max()}]"
        )
    if labels[keep].size and labels[keep].max() >= num_rows:
        raise ValueError(f"labels must be < {num_rows}, got {labels[keep].max()}")
    flat = labels[keep] * num_columns + predicted[keep]
    return np.bincount(flat, minlength=num_rows * num_columns).reshape(num_rows, num_columns)


def gt_pixel_classes(class_argmax: np.ndarray, gt_class_maps: np.ndarray, num_classes: int) -> np.ndarray:
    """Per image, the class the model names most often on its ground-truth defect pixels.

    Classification with detection left out: whether the class maps name a defect right where it is known to
    be. Ties go to the lower class.

    Args:
        class_argmax: (N, H, W) uint8 unthresholded ``1 + argmax`` class per pixel.
        gt_class_maps: (N, H, W) uint8 true class per pixel, 0 = normal.
        num_classes: K, the number of defect classes.

    Returns:
        (N,) int64 in 1..K, 0 for images without a defect pixel.
    """
    if class_argmax.shape != gt_class_maps.shape or class_argmax.ndim != 3:
        raise ValueError(
            f"class_argmax {class_argmax.shape} and gt_class_maps {gt_class_maps.shape} must be equal (N, H, W)"
        )
    out = np.zeros(len(class_argmax), np.int64)
    for i, (p, g) in enumerate(zip(class_argmax, gt_class_maps, strict=True)):
        named = p[g > 0].astype(np.int64)
        if named.size:
            out[i] = int(np.bincount(named, minlength=num_classes + 1)[1:].argmax()) + 1
    return out


def _safe(fn, *args) -> float:
    try:
        return float(fn(*args))
    except ValueError:  # undefined (e.g. no normal image): reported as missing, never as 0
        return math.nan


def category_metrics(
    anomaly_maps: np.ndarray,
    gt_class_maps: np.ndarray,
    predicted: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    fpr_limit: float = 0.3,
    valid: np.ndarray | None = None,
) -> list[dict[str, float | int | str]]:
    """Rows ``{"category", "i_auc", "p_auc", "pro", "acc", "iou", "n_images"}`` for ``normal``, each defect
    category (``names[1:]``, in class order) and ``mean`` (unweighted over the defect categories; NaN-aware).

    Args:
        anomaly_maps: ``(N, H, W)`` float maps; gt_class_maps / predicted: ``(N, H, W)`` int class maps
            (0 normal, 1..K); labels: ``(N,)`` image labels (-1 = several categories).
        names: class names by index, ``names[0]`` the normal class.
        valid: optional ``(N, H, W)`` bool, the pixels that count (False on letterbox padding).
    """
    labels = np.asarray(labels, np.int64)
    k = len(names) - 1
    keep = labels >= 0
    image_pred = image_classes(predicted, k) if len(predicted) else np.zeros(0, np.int64)
    pix = pixel_confusion(predicted[keep], gt_class_maps[keep], k + 1, None if valid is None else valid[keep])
    hits = np.diag(pix)
    union = pix.sum(axis=0) + pix.sum(axis=1) - hits
    iou = np.where(union > 0, hits / np.maximum(union, 1), np.nan)
    normal = labels == 0
    rows: list[dict[str, float | int | str]] = [
        {
            "category": names[0],
            "i_auc": math.nan,
            "p_auc": math.nan,
            "pro": math.nan,
            "acc": float(np.mean(image_pred[normal] == 0)) if normal.any() else math.nan,
            "iou": float(iou[0]),
            "n_images": int(normal.sum()),
        }
    ]
    for c in range(1, k + 1):
        mine = labels == c
        subset = normal | mine
        masks = gt_class_maps[subset] > 0
        v = None if valid is None else valid[subset]
        rows.append(
            {
                "category": names[c],
                "i_auc": _safe(image_auc, anomaly_maps[subset], mine[subset], "max", 100, v),
                "p_auc": _safe(pixel_auc, anomaly_maps[subset], masks, v),
                "pro": _safe(pro, anomaly_maps[subset], masks, fpr_limit, v),
                "acc": float(np.mean(image_pred[mine] == c)) if mine.any() else math.nan,
                "iou": float(iou[c]),
                "n_images": int(mine.sum()),
            }
        )
    defects = rows[1:]
    mean: dict[str, float | int | str] = {
        "category": "mean",
        "n_images": sum(int(r["n_images"]) for r in defects),
    }
    for col in COLUMNS:
        values = [float(r[col]) for r in defects if not math.isnan(float(r[col]))]
        mean[col] = float(np.mean(values)) if values else math.nan
    return [*rows, mean]
