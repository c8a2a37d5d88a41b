"""Batched inference: maps at the input image size plus the image-level decisions (``decision.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from uniadc.discriminator import decision
from uniadc.discriminator.model import Discriminator, model_input, preprocess


@dataclass(frozen=True)
class Prediction:
    """Discriminator outputs for N images of size (H, W).

    Attributes:
        anomaly_maps: (N, H, W) float32 in [0, 1], mean of the category maps, at the input size.
        class_maps: (N, H, W) uint8, 0 normal, k category k (K + 1 = "other" in open-set mode).
        image_scores: (N,) float32, maximum of each anomaly map.
        image_classes: (N,) int64, category with the largest predicted area, 0 if none.
        class_argmax: (N, H, W) uint8, ``1 + argmax`` category at every pixel (no threshold), to apply other
            thresholds to the same model.
        reference_maps: (N, H, W) float32 calibrated nearest-neighbour map when the model has a reference
            (equal to ``anomaly_maps`` unless the learned map was chosen), else None.
    """

    anomaly_maps: np.ndarray
    class_maps: np.ndarray
    image_scores: np.ndarray
    image_classes: np.ndarray
    class_argmax: np.ndarray
    reference_maps: np.ndarray | None = None


def _check_features(model: Discriminator, features: list[Tensor], n: int) -> None:
    channels = tuple(f.shape[1] if f.ndim == 4 else -1 for f in features)
    if channels != tuple(model.backbone.channels) or any(f.shape[0] != n for f in features):
        raise ValueError(
            f"features must be {len(model.backbone.channels)} tensors (N={n}, C) with C = "
            f"{tuple(model.backbone.channels)}, got shapes {[tuple(f.shape) for f in features]}"
        )


def predict(
    model: Discriminator,
    images: np.ndarray,
    threshold: float,
    batch_size: int = 16,
    features: list[Tensor] | None = None,
) -> Prediction:
    """Run the discriminator and apply the decision rules.

    Images are resized to ``model.image_size`` for the backbone; the class and anomaly logits go from the
    feature grid straight to the input size (bilinear) before the maps and decisions are computed.

    Args:
        model: a trained discriminator (put in eval mode here).
        images: (N, H, W, 3) uint8 RGB.
        threshold: anomaly score threshold in (0, 1).
        batch_size: images per forward pass.
        features: optional backbone features of ``images`` from ``image_features(model, images)``; the
            backbone is frozen and seed-independent, so several trained models can share them.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    preprocess(images[:0], model.image_size)  # validates shape and dtype
    n, h, w = images.shape[:3]
    if features is not None:
        _check_features(model, features, n)
    anomaly_maps = np.empty((n, h, w), np.float32)
    class_maps = np.empty((n, h, w), np.uint8)
    argmax = np.empty((n, h, w), np.uint8)
    reference_maps = np.empty((n, h, w), np.float32) if model.reference is not None else None
    previous_threads = torch.get_num_threads()
    if model.config.num_threads is not None:
        torch.set_num_threads(model.config.num_threads)
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                if features is None:
                    feats = model.extract_features(model_input(model, images[start:stop]))
                else:
                    feats = [f[start:stop] for f in features]
                out = model.head(feats, (h, w))  # grid -> input size in one interpolation
                anomaly_maps[start:stop] = torch.sigmoid(out.anomaly_logit).numpy()
                scores = out.class_logits.numpy()
                if reference_maps is not None and out.reference_logit is not None:
                    reference_maps[start:stop] = torch.sigmoid(out.reference_logit).numpy()
                class_maps[start:stop], argmax[start:stop] = decision.class_maps_and_argmax(
                    anomaly_maps[start:stop], scores, threshold
                )
    finally:
        torch.set_num_threads(previous_threads)
    return Prediction(
        anomaly_maps=anomaly_maps,
        class_maps=class_maps,
        image_scores=decision.image_scores(anomaly_maps),
        image_classes=decision.image_classes(class_maps, model.num_classes),
        class_argmax=argmax,
        reference_maps=reference_maps,
    )
