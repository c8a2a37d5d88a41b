"""Image and mask files -> arrays. Every image becomes uint8 RGB; every mask becomes bool (> 127)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from storage.errors import DataError
from storage.files import atomic_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from exc
    return img


def to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Any PIL mode (1, L, I;16, I, F, P, RGB, RGBA, ...) -> (H, W, 3) uint8.

    16-bit and float images are rescaled by their dtype range (16-bit: value >> 8), not by their own min/max,
    so two images of the same scene stay comparable.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.uint32)
        arr = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        arr = np.clip(arr, 0.0, 1.0) if arr.max() <= 1.0 else np.clip(arr, 0, 255) / 255.0
        arr = np.round(arr * 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = (
            img.convert("RGBA").convert("RGB")
            if img.mode in ("P", "LA", "RGBA", "PA")
            else img.convert("RGB")
        )
    return np.array(img, dtype=np.uint8)  # a writable copy (np.asarray of a PIL image is read-only)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file fully; returns (H, W, 3) uint8. Raises DataError naming the file."""
    return to_rgb_uint8(_open(Path(path)))


def read_mask(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a mask file; returns (H, W) bool: pixel > 127 in its first channel / luminance, or any non-zero
    pixel when the mask holds no value above 127 (class-label masks, values 1..K)."""
    img = _open(Path(path))
    arr = np.asarray(img.convert("L") if img.mode not in ("L", "1", "I;16", "I") else img)
    if arr.dtype == bool:
        mask = arr
    elif arr.dtype.itemsize > 1:
        mask = arr > 127 * 257
    else:  # 0/255 masks: above mid-grey; label-valued masks (official UniADC format, values 1..K): non-zero
        mask = arr > 127 if arr.size and arr.max() > 127 else arr > 0
    if expected_hw is not None and mask.shape != tuple(expected_hw):
        raise DataError(
            f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
            f"{expected_hw[1]}x{expected_hw[0]}"
        )
    return mask


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8, bilinear."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) bool or uint8 labels -> (size, size) same dtype, nearest neighbour."""
    if mask.shape == (size, size):
        return mask
    img = Image.fromarray(mask.astype(np.uint8))
    out = np.asarray(img.resize((size, size), Image.NEAREST))
    return out.astype(bool) if mask.dtype == bool else out


def write_png(path: str | Path, array: np.ndarray, compress_level: int = 6) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array (or bool mask as 0/255) as PNG, atomically.

    ``compress_level`` 1 writes about 3x faster and somewhat larger files (PNG stays lossless).
    """
    arr = array.astype(np.uint8) * 255 if array.dtype == bool else array
    with atomic_file(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG", compress_level=compress_level)
