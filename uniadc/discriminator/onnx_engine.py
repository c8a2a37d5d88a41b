"""ONNX Runtime engine for an exported discriminator (``uniadc.discriminator.export``): same outputs as
:func:`uniadc.discriminator.predict`.

At the graph's image size the engine feeds images unchanged and its maps match the torch engine to float
rounding; images of another size are resized to it (bilinear, antialiased) and the maps resized back
(bilinear), which the torch engine does in one step from the feature grid, so maps then agree only closely.
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from uniadc.discriminator import decision
from uniadc.discriminator.export import FORMAT, INPUT_NAME, OUTPUT_NAMES
from uniadc.discriminator.inference import Prediction


def _resize(plane: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(plane).resize((w, h), Image.BILINEAR), dtype=plane.dtype)


class OnnxEngine:
    """An ONNX Runtime session over the bytes of an exported model and its metadata.

    Args:
        model_bytes: the ``.onnx`` file's content.
        metadata: its metadata_props (``storage.onnx_files.read_onnx``).
        threads: intra-op threads (None: ONNX Runtime's default).
        providers: execution providers, default the CPU one.
    """

    def __init__(
        self,
        model_bytes: bytes,
        metadata: dict[str, str],
        threads: int | None = None,
        providers: list[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        if metadata.get("format") != FORMAT:
            raise ValueError(f"metadata format is {metadata.get('format')!r}, expected {FORMAT!r}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            model_bytes, options, providers=providers or ["CPUExecutionProvider"]
        )
        self.class_names: list[str] = json.loads(metadata["class_names"])
        self.image_size = int(metadata["image_size"])
        self.threshold = float(metadata["threshold"])
        self.num_classes = len(self.class_names) - 1

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) uint8 -> (anomaly maps (N, S, S), class logits (N, K, S, S))."""
        anomaly, logits = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images)})
        return anomaly, logits

    def predict(self, images: np.ndarray, threshold: float | None = None, batch_size: int = 8) -> Prediction:
        """Like :func:`uniadc.discriminator.predict`; ``threshold`` defaults to the file's."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be an (N, H, W, 3) uint8 array, got {images.shape} {images.dtype}")
        threshold = self.threshold if threshold is None else threshold
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        n, h, w = images.shape[:3]
        s = self.image_size
        anomaly_maps = np.empty((n, h, w), np.float32)
        class_maps = np.empty((n, h, w), np.uint8)
        argmax = np.empty((n, h, w), np.uint8)
        for start in range(0, n, batch_size):
            batch = images[start : start + batch_size]
            if (h, w) != (s, s):
                batch = np.stack([_resize(im, s, s) for im in batch])
            anomaly, logits = self.run(batch)
            if (h, w) != (s, s):
                anomaly = np.stack([_resize(a, h, w) for a in anomaly])
                logits = np.stack([[_resize(c, h, w) for c in img] for img in logits])
            stop = start + len(batch)
            anomaly_maps[start:stop] = anomaly
            class_maps[start:stop], argmax[start:stop] = decision.class_maps_and_argmax(
                anomaly, logits, threshold
            )
        return Prediction(
            anomaly_maps=anomaly_maps,
            class_maps=class_maps,
            image_scores=decision.image_scores(anomaly_maps),
            image_classes=decision.image_classes(class_maps, self.num_classes),
            class_argmax=argmax,
        )
