"""Decision rules (paper §3.4, eq. 5) as pure numpy functions on maps.

- image score = maximum of the anomaly map (the mean of the K category maps, computed by the model);
- pixel class = 1 + argmax category where the anomaly map >= threshold, else 0 (normal);
- image class = the category with the largest predicted area, 0 when no pixel fires (ties: lowest index).

With the reference map deciding and ``image_score: edge`` (:func:`edge_decisions`), the image score is the
reference's edge-aware score instead (``uniadc.reference.edge``); an image it calls normal has no firing
pixel, and an image it calls defective names the largest predicted area, or, when no pixel fires, the class
at its weighted maximum.
"""

from __future__ import annotations

import numpy as np

from uniadc.reference import ReferenceScorer


def pixel_classes(anomaly_maps: np.ndarray, class_scores: np.ndarray, threshold: float) -> np.ndarray:
    """Per-pixel class: 1 + argmax_k class_scores where anomaly_maps >= threshold, else 0.

    Args:
        anomaly_maps: (N, H, W) float in [0, 1].
        class_scores: (N, K, H, W) float per-category scores (probabilities or logits: only the argmax
            matters).
        threshold: anomaly score threshold.

    Returns:
        (N, H, W) uint8 class map, 0 = normal, k = category k.
    """
    if class_scores.ndim != 4 or class_scores.shape[:1] + class_scores.shape[2:] != anomaly_maps.shape:
        raise ValueError(
            f"class_scores must be (N, K, H, W) matching anomaly_maps {anomaly_maps.shape}, "
            f"got {class_scores.shape}"
        )
    if class_scores.shape[1] > 254:
        raise ValueError(f"at most 254 categories fit a uint8 class map, got {class_scores.shape[1]}")
    labels = class_scores.argmax(axis=1).astype(np.uint8) + np.uint8(1)
    return np.where(anomaly_maps >= threshold, labels, np.uint8(0))


def image_scores(anomaly_maps: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N,) float32 maximum of each anomaly map."""
    if anomaly_maps.ndim != 3:
        raise ValueError(f"anomaly_maps must be (N, H, W), got shape {anomaly_maps.shape}")
    return anomaly_maps.reshape(anomaly_maps.shape[0], -1).max(axis=1).astype(np.float32)


def image_classes(class_maps: np.ndarray, num_classes: int) -> np.ndarray:
    """Image class = category with the largest predicted area; 0 when the map is all normal.

    Args:
        class_maps: (N, H, W) integer class maps with values in 0..num_classes.
        num_classes: K.

    Returns:
        (N,) int64.
    """
    if class_maps.ndim != 3:
        raise ValueError(f"class_maps must be (N, H, W), got shape {class_maps.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    n = class_maps.shape[0]
    flat = class_maps.reshape(n, -1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() > num_classes):
        raise ValueError(f"class_maps values must be in 0..{num_classes}, got {flat.min()}..{flat.max()}")
    offsets = (np.arange(n, dtype=np.int64) * (num_classes + 1))[:, None]
    counts = np.bincount((flat + offsets).ravel(), minlength=n * (num_classes + 1)).reshape(
        n, num_classes + 1
    )
    areas = counts[:, 1:]
    return np.where(areas.max(axis=1) > 0, areas.argmax(axis=1) + 1, 0).astype(np.int64)


def class_maps_and_argmax(
    anomaly_maps: np.ndarray, class_scores: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """The thresholded class map and the unthresholded ``1 + argmax`` map, both (N, H, W) uint8."""
    return (
        pixel_classes(anomaly_maps, class_scores, threshold),
        pixel_classes(np.ones_like(anomaly_maps), class_scores, 0.5),
    )


def edge_decisions(
    reference: ReferenceScorer,
    reference_maps: np.ndarray,
    valid: np.ndarray,
    class_maps: np.ndarray,
    class_argmax: np.ndarray,
    threshold: float,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image decisions by the edge-aware score.

    Args:
        reference: a scorer with ``has_edge_score``.
        reference_maps: (N, S, S) calibrated reference maps on the model's canvas.
        valid: (N, S, S) bool picture pixels of those canvases.
        class_maps: (N, H, W) thresholded class maps (the canvas or the image's own size).
        class_argmax: (N, S, S) ``1 + argmax`` maps on the canvas.
        threshold: the run's threshold (0.5 = the fitted image threshold).
        num_classes: classes a map may hold besides normal (K, K + 1 open-set).

    Returns:
        (scores (N,) float32, image classes (N,) int64, class maps with the images called normal cleared).
    """
    scores, at = reference.edge_image_scores(reference.distances_from_calibrated(reference_maps), valid)
    quiet = scores < threshold
    class_maps = np.where(quiet[:, None, None], np.uint8(0), class_maps).astype(np.uint8)
    classes = image_classes(class_maps, num_classes)
    silent = ~quiet & (classes == 0)
    rows = np.flatnonzero(silent)
    classes[rows] = class_argmax.reshape(len(class_argmax), -1)[rows, at[rows]]
    return scores, classes, class_maps
