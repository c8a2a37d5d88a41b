"""How an image of any size meets the model's square input (``dataset.resize``): squash or letterbox.

``squash`` resizes to the square (bilinear; the historical behaviour, byte for byte). ``pad`` scales the long
side to the square's side, keeps the aspect ratio and fills the rest with the image mirrored at its edges
(texture of the image's own scale, so the backbone's receptive fields near the border see surface, not a
flat band, and per-image intensity statistics are not skewed by a constant fill); the ``valid`` mask is
False there, and metrics, image scores and synthesis leave those pixels out. ``auto`` pads images more
elongated than 1:1.5.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

PAD_ASPECT = 1.5


def resolved_resize(mode: str, height: int, width: int) -> str:
    """``dataset.resize`` for one image: ``auto`` -> ``pad`` beyond 1:1.5, else ``squash``."""
    if mode not in ("auto", "squash", "pad", "tile"):
        raise ValueError(f"resize must be auto, squash, pad or tile, got {mode!r}")
    if mode != "auto":
        return mode
    return "pad" if max(height, width) > PAD_ASPECT * min(height, width) else "squash"


def letterbox_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a ``height`` x ``width`` image scaled into a ``size`` square, aspect kept."""
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    return (size - h) // 2, (size - w) // 2, h, w


def letterbox_valid(height: int, width: int, size: int) -> np.ndarray:
    """(size, size) bool: the pixels a letterboxed ``height`` x ``width`` image covers."""
    top, left, h, w = letterbox_box(height, width, size)
    valid = np.zeros((size, size), bool)
    valid[top : top + h, left : left + w] = True
    return valid


def _resized(array: np.ndarray, hw: tuple[int, int], resample: int) -> np.ndarray:
    if array.shape[:2] == hw:
        return array
    return np.asarray(Image.fromarray(array).resize((hw[1], hw[0]), resample))


def fit_image(image: np.ndarray, size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 -> ((size, size, 3) uint8, (size, size) bool valid pixels), ``squash`` or ``pad``."""
    if mode == "squash":
        return _resized(image, (size, size), Image.BILINEAR), np.ones((size, size), bool)
    if mode != "pad":
        raise ValueError(f"fit_image mode must be squash or pad, got {mode!r}")
    top, left, h, w = letterbox_box(*image.shape[:2], size)
    pad = ((top, size - top - h), (left, size - left - w), (0, 0))
    out = np.pad(_resized(image, (h, w), Image.BILINEAR), pad, mode="reflect")
    return out, letterbox_valid(*image.shape[:2], size)


def fit_mask(mask: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(H, W) bool / uint8 labels -> (size, size) of the same dtype (nearest), placed as :func:`fit_image`."""
    small = mask.astype(np.uint8)
    if mode == "squash":
        out = _resized(small, (size, size), Image.NEAREST)
    elif mode == "pad":
        top, left, h, w = letterbox_box(*mask.shape[:2], size)
        out = np.zeros((size, size), np.uint8)
        out[top : top + h, left : left + w] = _resized(small, (h, w), Image.NEAREST)
    else:
        raise ValueError(f"fit_mask mode must be squash or pad, got {mode!r}")
    return out.astype(bool) if mask.dtype == bool else out


def fit_map(values: np.ndarray, size: int) -> np.ndarray:
    """(H, W) float map at an image's own size -> (size, size) float32 letterboxed (bilinear, 0 outside)."""
    top, left, h, w = letterbox_box(*values.shape[:2], size)
    out = np.zeros((size, size), np.float32)
    img = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F")
    out[top : top + h, left : left + w] = np.asarray(img.resize((w, h), Image.BILINEAR))
    return out


def canvas_mode(resize: str, height: int, width: int) -> str:
    """How an image lands on its canvas: squash or pad (a tiled image is letterboxed after stitching)."""
    mode = resolved_resize(resize, height, width)
    return "pad" if mode == "tile" else mode


def fit_ground_truth(gt: np.ndarray, size: int, resize: str) -> np.ndarray:
    """An (H, W) ground-truth class map on its image's canvas (nearest), placed as the image is."""
    return fit_mask(gt, size, canvas_mode(resize, *gt.shape[:2]))


def canvas(
    image: np.ndarray, gt: np.ndarray, size: int, resize: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, ground-truth class map, valid) of one image on its canvas (for metrics and reports)."""
    fitted, valid = fit_image(image, size, canvas_mode(resize, *image.shape[:2]))
    return fitted, fit_ground_truth(gt, size, resize), valid
