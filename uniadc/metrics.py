"""Evaluation metrics of UniADC (paper §4.1): I-AUC, P-AUC, PRO, Acc, mIoU and the per image class report.

Every metric is exact (no score grid, ties counted as half) and none derives a threshold from test data: the
pixel classifier uses a fixed threshold on sigmoid maps. Definitions and the differences to the official
UniADC code and to anomalib: docs/metrics.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
from scipy import ndimage

from schemas.tables import METRICS

METRIC_COLUMNS = ("i_auc", "p_auc", "pro", "acc", "miou")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_CHUNK = 1 << 20  # search batch, bounds the memory of the rank look-ups


def _check_maps(scores: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 3 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty (N, H, W) array, got shape {scores.shape}")
    if not np.issubdtype(scores.dtype, np.floating):
        raise ValueError(f"scores must be a floating array, got dtype {scores.dtype}")
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    if not np.isfinite(scores.sum(dtype=np.float32)) and not np.isfinite(scores).all():  # 1 pass if finite
        raise ValueError("scores contains NaN or infinite values")
    if masks is not None:
        masks = np.asarray(masks)
        if masks.shape != scores.shape:
            raise ValueError(f"masks shape {masks.shape} differs from scores shape {scores.shape}")
        if masks.dtype != np.bool_:
            raise ValueError(f"masks must be a bool array, got dtype {masks.dtype}")
    return np.ascontiguousarray(scores)


def _rank_sum(sorted_ref: np.ndarray, values: np.ndarray, weights: np.ndarray | None = None) -> int | float:
    """Sum over ``values`` (weighted) of ``#ref < v + #ref <= v``: twice the tie-halved rank, in chunks."""
    total = 0.0 if weights is not None else 0
    for start in range(0, values.size, _CHUNK):
        chunk = values[start : start + _CHUNK]
        ranks = np.searchsorted(sorted_ref, chunk, "left")  # 'right' is searched only where there are ties
        tied = sorted_ref[np.minimum(ranks, sorted_ref.size - 1)] == chunk
        ranks = 2 * ranks
        ranks[tied] += np.searchsorted(sorted_ref, chunk[tied], "right") - ranks[tied] // 2
        total += int(ranks.sum()) if weights is None else float(ranks @ weights[start : start + _CHUNK])
    return total


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact area under the ROC curve (Mann-Whitney U with ties counted as one half).

    Args:
        scores: Float array of any shape, finite; flattened.
        labels: Bool array of the same shape, True for the positive (anomalous) class.

    Returns:
        P(score of a positive > score of a negative) + 0.5 P(equal), in [0, 1].

    Raises:
        ValueError: on shape/dtype mismatch, non-finite scores or when a class is absent.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.shape != labels.shape or labels.dtype != np.bool_:
        raise ValueError(f"labels must be bool of shape {scores.shape}, got {labels.dtype} {labels.shape}")
    if not np.issubdtype(scores.dtype, np.floating) or not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite floats, got dtype {scores.dtype}")
    positives = np.sort(scores[labels], axis=None)
    n_pos, n_neg = positives.size, scores.size - positives.size
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC AUC needs both classes, got {n_pos} positive and {n_neg} negative samples")
    everything = np.sort(scores, axis=None)
    # sum over positives of (#all below + #all at or below) counts each positive-positive pair exactly once.
    twice_u = _rank_sum(everything, positives) - n_pos * n_pos
    return twice_u / (2 * n_pos * n_neg)


def _check_valid(valid: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """``valid`` = the pixels that count (False on letterbox padding); None = all of them."""
    if valid is None:
        return None
    valid = np.asarray(valid)
    if valid.shape != shape or valid.dtype != np.bool_:
        raise ValueError(f"valid must be a bool array of shape {shape}, got {valid.dtype} {valid.shape}")
    if not valid.reshape(len(valid), -1).any(axis=1).all():
        raise ValueError("valid must keep at least one pixel of every image")
    return valid


def image_scores(
    anomaly_maps: np.ndarray,
    reduction: Literal["max", "top_k_mean"] = "max",
    top_k: int = 100,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Image anomaly score: map maximum (paper §3.4) or mean of the ``top_k`` largest pixels (official code).

    Args:
        anomaly_maps: ``(N, H, W)`` float anomaly maps.
        reduction: ``"max"`` or ``"top_k_mean"``.
        top_k: Pixels averaged by ``"top_k_mean"``, 1 <= top_k <= H * W.
        valid: optional ``(N, H, W)`` bool, the pixels that count (others never give the score).

    Returns:
        ``(N,)`` float64 image scores.
    """
    maps = _check_maps(anomaly_maps)
    valid = _check_valid(valid, maps.shape)
    if valid is not None:
        maps = np.where(valid, maps, -np.inf)
    maps = maps.reshape(len(anomaly_maps), -1)
    if reduction == "max":
        return maps.max(axis=1).astype(np.float64)
    if reduction != "top_k_mean":
        raise ValueError(f"reduction must be 'max' or 'top_k_mean', got {reduction!r}")
    if not 1 <= top_k <= maps.shape[1]:
        raise ValueError(f"top_k must be in [1, {maps.shape[1]}], got {top_k}")
    cut = maps.shape[1] - top_k
    rows = [np.partition(row, cut)[cut:] for row in maps]
    return np.array([row[np.isfinite(row)].mean(dtype=np.float64) for row in rows])


def image_auc(
    anomaly_maps: np.ndarray,
    labels: np.ndarray,
    reduction: Literal["max", "top_k_mean"] = "max",
    top_k: int = 100,
    valid: np.ndarray | None = None,
) -> float:
    """I-AUC: ROC AUC of :func:`image_scores` against ``(N,)`` bool image labels (True = anomalous)."""
    return roc_auc(image_scores(anomaly_maps, reduction, top_k, valid), np.asarray(labels))


def pixel_auc(anomaly_maps: np.ndarray, masks: np.ndarray, valid: np.ndarray | None = None) -> float:
    """P-AUC: ROC AUC over all (``valid``) pixels of all ``(N, H, W)`` maps against ``(N, H, W)`` bool masks."""
    scores = _check_maps(anomaly_maps, masks)
    valid = _check_valid(valid, scores.shape)
    if valid is None:
        return roc_auc(scores, masks)
    return roc_auc(scores[valid], masks[valid])


Box = tuple[int, slice, slice]


def _regions(scores: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Box]]:
    """Score and region id of every anomalous pixel, size of every 8-connected region, mask bounding boxes."""
    empty = np.zeros(0, np.int64)
    values, regions, sizes, boxes, count = [scores[:0, 0, 0]], [empty], [empty], [], 0
    for i in np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1)):
        rows, cols = np.flatnonzero(masks[i].any(axis=1)), np.flatnonzero(masks[i].any(axis=0))
        box = (i, slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        labels, found = ndimage.label(masks[box], structure=_EIGHT_CONNECTED)
        label = labels[masks[box]]
        regions.append(label.astype(np.int64) + (count - 1))
        sizes.append(np.bincount(label, minlength=found + 1)[1:])
        count += found
        values.append(scores[box][masks[box]])
        boxes.append(box)
    return np.concatenate(values), np.concatenate(regions), np.concatenate(sizes), boxes


def _max_count(fpr_limit: float, n_ok: int) -> int:
    """Largest number m of normal pixels with m / n_ok <= fpr_limit."""
    m = min(math.floor(fpr_limit * n_ok), n_ok)
    while m < n_ok and (m + 1) / n_ok <= fpr_limit:
        m += 1
    while m > 0 and m / n_ok > fpr_limit:
        m -= 1
    return m


def _top_normals(
    scores: np.ndarray, masks: np.ndarray, boxes: list[Box], count: int, valid: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """The ``count`` largest normal scores, sorted, and how many other normal scores tie with the smallest."""
    work = scores.copy()
    if valid is not None:  # excluded pixels sink below every score (-inf never ties a finite score)
        work[~valid] = -np.inf
    for box in boxes:  # anomalous pixels only lie in the masks' bounding boxes
        work[box][masks[box]] = -np.inf
    flat = work.reshape(-1)
    flat.partition(flat.size - count)  # introselect, O(pixels): no global sort
    top, rest = flat[flat.size - count :], flat[: flat.size - count]
    top.sort()
    tied = sum(int(np.count_nonzero(rest[i : i + _CHUNK] == top[0])) for i in range(0, rest.size, _CHUNK))
    return top, tied


def _sort_by_score(values: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorts scores ascending with their ids; float32 packs both in one uint64 key (SIMD sort, no argsort)."""
    if values.dtype != np.float32:
        order = np.argsort(values, kind="stable")
        return values[order], ids[order]
    bits = (values + np.float32(0)).view(np.uint32)  # -0.0 -> +0.0
    ordered = np.where(bits >= 0x80000000, ~bits, bits | np.uint32(0x80000000))
    key = (ordered.astype(np.uint64) << np.uint64(32)) | ids.astype(np.uint64)
    key.sort()
    high = (key >> np.uint64(32)).astype(np.uint32)
    bits = np.where(high >= 0x80000000, high & np.uint32(0x7FFFFFFF), ~high)
    return bits.view(np.float32), (key & np.uint64(0xFFFFFFFF)).astype(np.intp)


def pro(
    scores: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, valid: np.ndarray | None = None
) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD definition, exact).

    Regions are the 8-connected components of each image's mask. At a threshold t, PRO(t) is the mean over all
    regions of the fraction of the region's pixels with score >= t, and FPR(t) the fraction of all normal
    pixels of all images with score >= t. The curve runs over every distinct score (ties merged, from (0, 0)
    to (1, 1)); its area up to FPR = ``fpr_limit``, linearly interpolated at the limit, is divided by
    ``fpr_limit``. Images without defects contribute only normal pixels. A constant map (all pixels tied)
    gives the diagonal, so exactly ``fpr_limit / 2`` (0.15 by default), as does a random ranking on average.

    Only the normal pixels above the score at the limit are sorted (selected by a partition) and the anomalous
    pixels are ranked against them: far cheaper than a global sort, and still exact.

    Args:
        scores: ``(N, H, W)`` float anomaly maps (float32 or float64; others are cast to float64).
        masks: ``(N, H, W)`` bool ground truth, True = anomalous.
        fpr_limit: Integration limit in (0, 1].
        valid: optional ``(N, H, W)`` bool, the pixels that count: the others (letterbox padding) are
            neither normal nor anomalous; masks must be False there.

    Returns:
        The PRO score in [0, 1].

    Raises:
        ValueError: on shape/dtype mismatch, non-finite scores, a limit outside (0, 1], or masks without any
            anomalous or without any normal pixel.
    """
    scores = _check_maps(scores, masks)
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    valid = _check_valid(valid, scores.shape)
    if valid is not None and (masks & ~valid).any():
        raise ValueError("masks marks pixels outside valid")
    values, regions, sizes, boxes = _regions(scores, masks)
    n_ok = (scores.size if valid is None else int(np.count_nonzero(valid))) - values.size
    if values.size == 0:
        raise ValueError("masks has no anomalous pixel: PRO is undefined")
    if n_ok == 0:
        raise ValueError("masks has no normal pixel: the FPR of PRO is undefined")
    weight = 1.0 / (sizes * sizes.size)  # each region pixel's share of the mean overlap
    rank = min(_max_count(fpr_limit, n_ok), n_ok - 1)  # 0-based rank of the normal score at the limit
    top, tied_below = _top_normals(scores, masks, boxes, rank + 1, valid)
    cut = top[0]
    at_or_below = int(np.searchsorted(top, cut, "right"))
    above = top.size - at_or_below  # normal pixels strictly above the cut
    ties = at_or_below + tied_below
    values, regions = _sort_by_score(values, regions)
    first_tied, first_higher = np.searchsorted(values, cut, "left"), np.searchsorted(values, cut, "right")
    overlap_tied = float(weight[regions[first_tied:first_higher]].sum())
    high_values, high_weight = values[first_higher:], weight[regions[first_higher:]]
    overlap_above = float(high_weight.sum())
    # Full steps: each normal pixel above the cut adds 1/n_ok in FPR times the overlap of the anomalous pixels
    # above it (half for ties), summed from the anomalous side: weight * (normals in (cut, value) + ties / 2).
    ranks2 = _rank_sum(top, high_values, high_weight) - 2 * at_or_below * overlap_above
    area = ranks2 / (2 * n_ok)
    # Partial step at the limit: linear from (above / n_ok, overlap above cut) to the point including the cut.
    step = fpr_limit - above / n_ok
    overlap_at_limit = overlap_above + step * n_ok / ties * overlap_tied
    area += step * (overlap_above + overlap_at_limit) / 2
    return min(area / fpr_limit, 1.0)


def pixel_classes(
    class_maps: np.ndarray, threshold: float = 0.5, anomaly_maps: np.ndarray | None = None
) -> np.ndarray:
    """Pixel class map (paper eq. 5): ``1 + argmax_k`` of the class maps where anomaly score >= ``threshold``.

    Args:
        class_maps: ``(N, K, H, W)`` float per-category sigmoid maps.
        threshold: Fixed anomaly score threshold (paper: 0.5); never derived from test data.
        anomaly_maps: ``(N, H, W)`` anomaly maps; default the mean of ``class_maps`` over K (paper §3.4).

    Returns:
        ``(N, H, W)`` int16 map, 0 = normal, k = k-th category (1-based); argmax ties go to the lower index.
    """
    class_maps = np.asarray(class_maps)
    if class_maps.ndim != 4 or not np.issubdtype(class_maps.dtype, np.floating):
        raise ValueError(f"class_maps must be float (N, K, H, W), got {class_maps.dtype} {class_maps.shape}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    n, _, h, w = class_maps.shape
    if anomaly_maps is not None and np.shape(anomaly_maps) != (n, h, w):
        raise ValueError(f"anomaly_maps must have shape {(n, h, w)}, got {np.shape(anomaly_maps)}")
    out = np.zeros((n, h, w), dtype=np.int16)
    for i, maps in enumerate(class_maps):  # per image: bounded temporaries
        anomaly = maps.mean(axis=0) if anomaly_maps is None else np.asarray(anomaly_maps[i])
        out[i] = np.where(anomaly >= threshold, maps.argmax(axis=0) + 1, 0)
    return out


def _check_classes(class_maps: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    class_maps = np.asarray(class_maps)
    if class_maps.ndim != 3 or not np.issubdtype(class_maps.dtype, np.integer):
        raise ValueError(f"{name} must be integer (N, H, W), got {class_maps.dtype} {class_maps.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    low, high = (class_maps.min(), class_maps.max()) if class_maps.size else (0, 0)
    if low < 0 or high > num_classes:
        raise ValueError(f"{name} values must be in [0, {num_classes}], got [{low}, {high}]")
    return class_maps


def image_classes(class_maps: np.ndarray, num_classes: int) -> np.ndarray:
    """Image class: category of largest area in an ``(N, H, W)`` class map (lowest on ties), 0 if none."""
    class_maps = _check_classes(class_maps, num_classes, "class_maps")
    counts = np.zeros((len(class_maps), num_classes), np.int64)
    for i, m in enumerate(class_maps):
        counts[i] = np.bincount(m.ravel(), minlength=num_classes + 1)[1:]
    return np.where(counts.max(axis=1) > 0, counts.argmax(axis=1) + 1, 0)


def single_labels(gt_class_maps: np.ndarray, num_classes: int) -> np.ndarray:
    """True image label: 0 normal, k if only category k is present, -1 if several (not in Acc and mIoU)."""
    gt_class_maps = _check_classes(gt_class_maps, num_classes, "gt_class_maps")
    present = np.zeros((len(gt_class_maps), num_classes), bool)
    for i, m in enumerate(gt_class_maps):
        present[i] = np.bincount(m.ravel(), minlength=num_classes + 1)[1:] > 0
    return np.where(present.sum(axis=1) > 1, -1, np.where(present.any(axis=1), present.argmax(axis=1) + 1, 0))


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Acc: fraction of ``predicted == labels`` over the images with a single-category label (>= 0)."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if predicted.shape != labels.shape or predicted.ndim != 1:
        raise ValueError(f"predicted and labels must be (N,), got {predicted.shape} and {labels.shape}")
    valid = labels >= 0
    if not valid.any():
        raise ValueError("labels has no single-category image (all -1): accuracy is undefined")
    return float(np.mean(predicted[valid] == labels[valid]))


def mean_iou(
    predicted: np.ndarray,
    gt_class_maps: np.ndarray,
    num_classes: int,
    include_normal: bool = True,
    absent: Literal["skip", "zero"] = "skip",
    valid: np.ndarray | None = None,
) -> float:
    """mIoU: per-class IoU of the class maps pooled over all images, macro-averaged over classes.

    Args:
        predicted: ``(N, H, W)`` integer predicted class map (0 = normal, 1..K categories).
        gt_class_maps: ``(N, H, W)`` integer ground-truth class map, same convention.
        num_classes: K, the number of anomaly categories.
        include_normal: Average over classes 0..K (background/normal included, as the official code does) if
            True, else over the K anomaly categories only.
        absent: A class absent from both maps has no IoU: ``"skip"`` leaves it out of the mean, ``"zero"``
            counts it as 0 (the official code, via sklearn ``jaccard_score``'s zero_division default).
        valid: optional ``(N, H, W)`` bool, the pixels that count.

    Returns:
        The mean IoU in [0, 1].
    """
    predicted = _check_classes(predicted, num_classes, "predicted")
    gt_class_maps = _check_classes(gt_class_maps, num_classes, "gt_class_maps")
    if predicted.shape != gt_class_maps.shape or predicted.size == 0:
        raise ValueError(f"predicted shape {predicted.shape} != gt_class_maps shape {gt_class_maps.shape}")
    if absent not in ("skip", "zero"):
        raise ValueError(f"absent must be 'skip' or 'zero', got {absent!r}")
    size = num_classes + 1
    valid = _check_valid(valid, predicted.shape)
    confusion = np.zeros(size * size, dtype=np.int64)
    for i, (p, g) in enumerate(zip(predicted, gt_class_maps, strict=True)):  # per image: bounded temporaries
        if valid is not None:
            p, g = p[valid[i]], g[valid[i]]
        confusion += np.bincount(g.astype(np.int64).ravel() * size + p.ravel(), minlength=size * size)
    confusion = confusion.reshape(size, size)
    hits = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - hits
    classes = np.arange(0 if include_normal else 1, size)
    if absent == "skip":
        classes = classes[union[classes] > 0]
        if classes.size == 0:
            raise ValueError("no evaluated class occurs in predicted or gt_class_maps: mIoU is undefined")
    return float(np.mean(np.where(union[classes] > 0, hits[classes] / np.maximum(union[classes], 1), 0.0)))


def _checked_scores(scores: np.ndarray, n: int) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    if scores.shape != (n,) or not np.isfinite(scores).all():
        raise ValueError(f"image_scores must be ({n},) finite floats, got shape {scores.shape}")
    return scores


def evaluate(
    anomaly_maps: np.ndarray,
    gt_class_maps: np.ndarray,
    predicted: np.ndarray,
    num_classes: int,
    labels: np.ndarray | None = None,
    reduction: Literal["max", "top_k_mean"] = "max",
    top_k: int = 100,
    fpr_limit: float = 0.3,
    include_normal: bool = True,
    valid: np.ndarray | None = None,
    image_scores: np.ndarray | None = None,
) -> dict[str, float | int]:
    """All five metrics of one image class (e.g. one MVTec-FS product).

    I-AUC, P-AUC and PRO use every image; Acc and mIoU only images whose label is >= 0 (single category or
    normal), so images labelled -1 (several categories, MVTec-FS "combined") count for detection only.

    Args:
        anomaly_maps: ``(N, H, W)`` float anomaly maps.
        gt_class_maps: ``(N, H, W)`` integer ground-truth class maps (0 normal, 1..K).
        predicted: ``(N, H, W)`` integer predicted class maps, e.g. from :func:`pixel_classes`.
        num_classes: K.
        labels: ``(N,)`` int image labels (-1 = excluded from Acc/mIoU); default :func:`single_labels`.
        reduction, top_k: Image score of :func:`image_scores`.
        fpr_limit: Of :func:`pro`.
        include_normal: Of :func:`mean_iou`.
        valid: optional ``(N, H, W)`` bool, the pixels that count (False on letterbox padding).
        image_scores: optional ``(N,)`` image scores for I-AUC (e.g. an edge-aware score); default the maps'
            ``reduction``.

    Returns:
        ``{"i_auc", "p_auc", "pro", "acc", "miou": float, "n_images": int}``.
    """
    gt_class_maps = _check_classes(gt_class_maps, num_classes, "gt_class_maps")
    masks = gt_class_maps > 0
    labels = single_labels(gt_class_maps, num_classes) if labels is None else np.asarray(labels)
    if labels.shape != (len(masks),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer ({len(masks)},), got {labels.dtype} {labels.shape}")
    keep = labels >= 0
    predicted = _check_classes(predicted, num_classes, "predicted")
    if predicted.shape != masks.shape:
        raise ValueError(f"predicted shape {predicted.shape} must equal gt_class_maps shape {masks.shape}")
    kept = None if valid is None else np.asarray(valid)[keep]
    return {
        "i_auc": image_auc(anomaly_maps, masks.any(axis=(1, 2)), reduction, top_k, valid)
        if image_scores is None
        else roc_auc(_checked_scores(image_scores, len(masks)), masks.any(axis=(1, 2))),
        "p_auc": pixel_auc(anomaly_maps, masks, valid),
        "pro": pro(anomaly_maps, masks, fpr_limit, valid),
        "acc": accuracy(image_classes(predicted[keep], num_classes), labels[keep]),
        "miou": mean_iou(predicted[keep], gt_class_maps[keep], num_classes, include_normal, valid=kept),
        "n_images": len(masks),
    }


def metrics_table(rows: Mapping[str, Mapping[str, float | int]], mean_name: str = "mean") -> pl.DataFrame:
    """Report table: one row per image class (from :func:`evaluate`) and a last row of their unweighted mean.

    Args:
        rows: ``{image_class: {"i_auc", "p_auc", "pro", "acc", "miou", "n_images"}}``, metrics as fractions.
        mean_name: Image class name of the averaged row (its n_images is the total).

    Returns:
        A polars DataFrame with the columns and dtypes of ``schemas.tables.METRICS``.
    """
    if not rows or mean_name in rows:
        raise ValueError(f"rows must be non-empty and must not contain {mean_name!r}, got {list(rows)}")
    expected = {*METRIC_COLUMNS, "n_images"}
    for name, row in rows.items():
        if set(row) != expected:
            raise ValueError(f"row {name!r} must have keys {sorted(expected)}, got {sorted(row)}")
    records = [{"image_class": name, **row} for name, row in rows.items()]
    mean = {c: float(np.mean([row[c] for row in rows.values()])) for c in METRIC_COLUMNS}
    total = sum(int(row["n_images"]) for row in rows.values())
    records.append({"image_class": mean_name, **mean, "n_images": total})
    return pl.from_arrow(pa.Table.from_pylist(records, schema=METRICS))


def format_metrics_table(table: pl.DataFrame) -> str:
    """Plain-text table of a :func:`metrics_table`, metrics in percent with two decimals (as in the paper)."""
    header = f"{'image_class':<24}" + "".join(f"{c:>8}" for c in METRIC_COLUMNS) + f"{'n_images':>10}"
    lines = [header, "-" * len(header)]
    for row in table.iter_rows(named=True):
        cells = "".join(f"{100 * row[c]:>8.2f}" for c in METRIC_COLUMNS)
        lines.append(f"{row['image_class']:<24}{cells}{row['n_images']:>10d}")
    return "\n".join(lines)
