"""Prediction over images of any size under ``dataset.resize``, on one square canvas per image.

Every image ends on a ``size`` x ``size`` canvas with a ``valid`` mask: squashed images fill it, padded and
tiled ones are letterboxed into it (tiles are stitched at the image's own resolution first, mean over
overlaps, then scaled onto the canvas). Metrics are computed on these canvases over the valid pixels: the
stated resolution is "long side = ``image_size``, aspect ratio kept" for pad and tile, the square for squash.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from uniadc.discriminator import decision
from uniadc.discriminator.inference import Prediction, predict
from uniadc.discriminator.model import Discriminator
from uniadc.geometry.letterbox import (
    fit_image,
    fit_map,
    fit_mask,
    letterbox_box,
    letterbox_valid,
    resolved_resize,
)
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
    classes = decision.image_classes(class_maps, model.num_classes)
    if model.edge_image_score and whole:  # tiled images keep the stitched map's maximum
        w = np.array(whole)
        scores[w], classes[w], class_maps[w] = decision.edge_decisions(
            model.reference, reference[w], valid[w], class_maps[w], argmax[w], threshold, model.num_classes
        )
    return CanvasPrediction(
        anomaly_maps=anomaly,
        class_maps=class_maps,
        image_scores=scores,
        image_classes=classes,
        class_argmax=argmax,
        valid=valid,
        reference_maps=reference,
        modes=modes,
    )


def _square(values: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """An (H, W) map -> (size, size), as the image was squashed."""
    from PIL import Image

    if values.shape == (size, size):
        return values
    if nearest:
        return np.asarray(Image.fromarray(values).resize((size, size), Image.NEAREST))
    return np.asarray(
        Image.fromarray(values.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR)
    )


def _crop_back(values: np.ndarray, height: int, width: int, nearest: bool) -> np.ndarray:
    """A letterboxed (S, S) map -> the image's own (height, width), the padding cut off."""
    from PIL import Image

    top, left, h, w = letterbox_box(height, width, values.shape[0])
    crop = np.ascontiguousarray(values[top : top + h, left : left + w])
    if nearest:
        return np.asarray(Image.fromarray(crop).resize((width, height), Image.NEAREST))
    return np.asarray(
        Image.fromarray(crop.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)
    )


def predict_original(
    model: Discriminator, image: np.ndarray, threshold: float, resize: str, overlap: float = 0.25
) -> Prediction:
    """One image of any size -> :class:`Prediction` at the image's own size under ``resize``: squash (the
    model's map resized back), pad (letterboxed, padding cut off) or tile (stitched at full resolution)."""
    h, w = image.shape[:2]
    mode = resolved_resize(resize, h, w)
    if mode == "squash":
        pred = predict(model, image[None], threshold, batch_size=1)
        if not model.edge_image_score:
            return pred
        size = model.image_size  # decided on the square canvas evaluate scores
        ref = _square(pred.reference_maps[0], size, nearest=False)[None]
        argmax = _square(pred.class_argmax[0], size, nearest=True)[None]
        scores, classes, class_maps = decision.edge_decisions(
            model.reference,
            ref,
            np.ones_like(ref, bool),
            pred.class_maps,
            argmax,
            threshold,
            model.num_classes,
        )
        return replace(pred, image_scores=scores, image_classes=classes, class_maps=class_maps)
    if mode == "tile":
        anomaly, argmax, ref = _tiled(model, image, threshold, overlap, model.num_classes + 1)
    else:
        fitted, _ = fit_image(image, model.image_size, "pad")
        pred = predict(model, fitted[None], threshold, batch_size=1)
        anomaly = _crop_back(pred.anomaly_maps[0], h, w, nearest=False)
        argmax = _crop_back(pred.class_argmax[0], h, w, nearest=True)
        ref = None if pred.reference_maps is None else _crop_back(pred.reference_maps[0], h, w, nearest=False)
    class_maps = np.where(anomaly >= threshold, argmax, np.uint8(0)).astype(np.uint8)[None]
    anomaly = anomaly.astype(np.float32)[None]
    scores = decision.image_scores(anomaly)
    classes = decision.image_classes(class_maps, model.num_classes)
    if model.edge_image_score and mode == "pad":  # decided on the canvas, as evaluate does
        scores, classes, class_maps = decision.edge_decisions(
            model.reference, pred.reference_maps, letterbox_valid(h, w, model.image_size)[None], class_maps,
            pred.class_argmax, threshold, model.num_classes,
        )  # fmt: skip
    return Prediction(
        anomaly_maps=anomaly,
        class_maps=class_maps,
        image_scores=scores,
        image_classes=classes,
        class_argmax=argmax.astype(np.uint8)[None],
        reference_maps=None if ref is None else ref.astype(np.float32)[None],
    )
