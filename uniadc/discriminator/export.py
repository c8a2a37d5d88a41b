"""What ``uniadc export`` puts in an ONNX graph, and the metadata a line needs to use it alone.

The graph is the whole model, pre-processing included: ``images`` uint8 (N, S, S, 3) RGB (dynamic N) ->
``anomaly_map`` float32 (N, S, S) in [0, 1] (the map the model decides with: calibrated so that 0.5 is the
threshold fitted on training data) and ``class_logits`` float32 (N, K, S, S). The decisions are two lines of
numpy (``uniadc.discriminator.decision``): pixel class = 1 + argmax_k class_logits where anomaly_map >= the
threshold, else 0; image class = the class with the largest area; image score = max of the map, or with
``discriminator.image_score: edge`` the edge-aware score whose parameters the ``image_score`` metadata holds.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import Tensor, nn

from uniadc.discriminator.backbones import IMAGENET_MEAN, IMAGENET_STD
from uniadc.discriminator.intensity import apply_intensity
from uniadc.discriminator.model import Discriminator
from uniadc.reference.edge import BAND_EDGES_AT_256

INPUT_NAME = "images"
OUTPUT_NAMES = ("anomaly_map", "class_logits")
FORMAT = "uniadc.onnx/1"


class InferenceGraph(nn.Module):
    """uint8 (N, S, S, 3) RGB -> (anomaly map (N, S, S), class logits (N, K, S, S)); S = ``image_size``."""

    def __init__(self, model: Discriminator, image_size: int | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.image_size = int(image_size or model.image_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        x = apply_intensity(x, self.model.config.intensity)
        x = (x - self.mean) / self.std
        out = self.model.head(self.model.backbone(x), (self.image_size, self.image_size))
        return torch.sigmoid(out.anomaly_logit), out.class_logits


def threshold_origin(model: Discriminator) -> str:
    """How the 0.5 on the exported map was set, in words (printed by ``uniadc export``, stored in the file)."""
    ref = model.reference
    if ref is None or not ref.calibrated:
        return "fixed 0.5 on the mean of the class maps (no calibration: discriminator.reference none)"
    if ref.uses_learned:
        return (
            "0.5 on the learned map shifted by its calibrated logit "
            f"{float(ref.learned_tau_logit):.4f} (fitted on training data; detector choice: learned)"
        )
    return (
        f"0.5 = nearest-neighbour distance tau {float(ref.threshold):.5f} (scale {float(ref.scale):.5f}), "
        f"fitted on leave-one-out training maps ({model.config.calibration})"
    )


def _image_score_line(model: Discriminator) -> str:
    """How the trained model scores images; with the edge-aware score, everything needed to recompute it."""
    if not model.edge_image_score:
        return "max anomaly_map"
    ref = model.reference
    return json.dumps(
        {
            "rule": "edge (uniadc.reference.edge): D = tau + scale * logit(anomaly_map); weight D by gain[band "
            "of the chessboard distance to the picture edge]; score = sigmoid((max over the picture - "
            "image_threshold) / image_scale); an image scoring below 0.5 has no firing pixel",
            "tau": float(ref.threshold),
            "scale": float(ref.scale),
            "band_edges_at_256": list(BAND_EDGES_AT_256),
            "gain": [float(g) for g in ref.edge_gain],
            "image_threshold": float(ref.image_threshold),
            "image_scale": float(ref.image_scale),
        }
    )


def export_metadata(
    model: Discriminator,
    category_names: list[str],
    image_size: int,
    checkpoint_sha256: str,
    versions: dict[str, str],
) -> dict[str, str]:
    """String key/values stored in the ONNX file's ``metadata_props``."""
    names = ["normal", *category_names] + (["other"] if model.config.open_set else [])
    config_json = model.config.model_dump_json()
    return {
        "format": FORMAT,
        "class_names": json.dumps(names),
        "threshold": "0.5",
        "threshold_origin": threshold_origin(model),
        "image_size": str(int(image_size)),
        "trained_image_size": str(int(model.image_size)),
        "input": f"{INPUT_NAME}: uint8 (N, {image_size}, {image_size}, 3) RGB; normalisation is inside the graph",
        "normalisation": json.dumps(
            {"scale": 1 / 255, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
        ),
        "outputs": "anomaly_map: float32 (N, S, S) in [0, 1]; class_logits: float32 (N, K, S, S), class k+1",
        "decision": "pixel class = 1 + argmax_k class_logits where anomaly_map >= threshold, else 0; image "
        "class = class with the largest area (0 if none); image score = max anomaly_map",
        "image_score": _image_score_line(model),
        "discriminator_config": config_json,
        "config_hash": hashlib.sha256(config_json.encode()).hexdigest(),
        "checkpoint_sha256": checkpoint_sha256,
        "backbone_sha256": model.backbone_fingerprint(),
        "versions": json.dumps(versions, sort_keys=True),
    }
