"""Prediction over images of any size under ``dataset.resize``, on one square canvas per image.

Every image ends on a ``size`` x ``size`` canvas with a ``valid`` mask: squashed images fill it, padded and
tiled ones are letterboxed into it (tiles are stitched at the image's own resolution first, mean over
overlaps, then scaled onto the canvas). Metrics are computed on these canvases over the valid pixels: the
stated resolution is "long side = ``image_size``, aspect ratio kept" for pad and tile, the square for squash.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from uniadc.discriminator import decision
from uniadc.discriminator.inference import predict
from uniadc.discriminator.model import Discriminator
from uniadc.geometry.letterbox import fit_image, fit_map, fit_mask, letterbox_valid, resolved_resize
from uniadc.geometry.tiles import cut_tiles, stitch_mean, stitch_votes, tile_windows


@dataclass(frozen=True)
class CanvasPrediction:
    """Like :class:`uniadc.discriminator.Prediction`, on (N, S, S) canvases with their ``valid`` pixels;
    maps are 0 and classes 0 outside ``valid``; image scores and classes use valid pixels only."""

    anomaly_maps: np.ndarray
    class_maps: np.ndarray
    image_scores: np.ndarray
    image_classes: np.ndarray
    class_argmax: np.ndarray
    valid: np.ndarray
    reference_maps: np.ndarray | None
    modes: list[str]


def _tiled(model: Discriminator, image: np.ndarray, threshold: float, overlap: float, labels: int):
    """Stitched (anomaly, argmax, reference | None) maps of one image at its own resolution."""
    h, w = image.shape[:2]
    windows = tile_windows(h, w, model.image_size, overlap)
    pred = predict(model, cut_tiles(image, windows, model.image_size), threshold)
    anomaly = stitch_mean(pred.anomaly_maps, windows, h, w)
    argmax = stitch_votes(pred.class_argmax, windows, h, w, labels)
    ref = None if pred.reference_maps is None else stitch_mean(pred.reference_maps, windows, h, w)
    return anomaly, argmax, ref


def predict_canvas(
    model: Discriminator, images: list[np.ndarray], threshold: float, resize: str, overlap: float = 0.25
) -> CanvasPrediction:
    """Predict images of any sizes by ``resize`` (auto | squash | pad | tile) onto ``model.image_size``
    canvases. Squashed and padded images go through :func:`predict` in one batch; a tiled image's windows
    form one batch each."""
    size, n = model.image_size, len(images)
    labels = model.num_classes + 1  # normal and the model's categories (with an open-set "other")
    anomaly = np.zeros((n, size, size), np.float32)
    argmax = np.zeros((n, size, size), np.uint8)
    reference = np.zeros((n, size, size), np.float32) if model.reference is not None else None
    valid = np.zeros((n, size, size), bool)
    modes = [resolved_resize(resize, *im.shape[:2]) for im in images]
    whole = [i for i, m in enumerate(modes) if m != "tile"]
    if whole:
        fitted = [fit_image(images[i], size, modes[i]) for i in whole]
        pred = predict(model, np.stack([f[0] for f in fitted]), threshold)
        for j, i in enumerate(whole):
            anomaly[i], argmax[i], valid[i] = pred.anomaly_maps[j], pred.class_argmax[j], fitted[j][1]
            if reference is not None and pred.reference_maps is not None:
                reference[i] = pred.reference_maps[j]
    for i in (i for i, m in enumerate(modes) if m == "tile"):
        a, c, r = _tiled(model, images[i], threshold, overlap, labels)
        anomaly[i], argmax[i] = fit_map(a, size), fit_mask(c, size, "pad")
        valid[i] = letterbox_valid(*a.shape, size)
        if reference is not None and r is not None:
            reference[i] = fit_map(r, size)
    anomaly[~valid] = 0.0
    argmax[~valid] = 0
    if reference is not None:
        reference[~valid] = 0.0
    class_maps = np.where(valid & (anomaly >= threshold), argmax, np.uint8(0)).astype(np.uint8)
    scores = np.where(valid, anomaly, -np.inf).reshape(n, -1).max(axis=1).astype(np.float32)
    return CanvasPrediction(
        anomaly_maps=anomaly,
        class_maps=class_maps,
        image_scores=scores,
        image_classes=decision.image_classes(class_maps, model.num_classes),
        class_argmax=argmax,
        valid=valid,
        reference_maps=reference,
        modes=modes,
    )
