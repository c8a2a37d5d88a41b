"""Few-shot cut-paste of real anomaly support regions (paper §3.3).

:func:`extract_regions` splits a support anomaly mask into 8-connected components, drops those smaller than
``min_region_px`` pixels and crops each with a ``context_ratio`` margin (of the component's box height/width)
on every side. :func:`paste_region` applies one random flip/rotation/scale to crop and mask together, places
the defect so that at least half of it lies inside the destination foreground (the best of ``PLACEMENT_TRIES``
draws otherwise), matches the crop's context brightness to the destination and blends the defect with a
feathered alpha (Gaussian sigma ``PASTE_FEATHER_PX``). Only the defect (not its context rectangle) is pasted;
the context is kept for SSIM scoring. The returned mask is the region that actually changed (any channel
differs from the normal image); it lies inside the returned box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from schemas.config import CutPasteOptions

PASTE_FEATHER_PX = 1.0
PLACEMENT_TRIES = 20
MIN_FOREGROUND_OVERLAP = 0.5


@dataclass(frozen=True)
class SupportRegion:
    """One real defect with context, cut from a support anomaly image.

    Attributes:
        crop: (h, w, 3) uint8 image crop including the context margin.
        mask: (h, w) bool, True on the component's pixels inside the crop.
        source_image_id: id of the support image it came from.
    """

    crop: np.ndarray
    mask: np.ndarray
    source_image_id: str

    def __post_init__(self) -> None:
        if self.crop.ndim != 3 or self.crop.shape[-1] != 3 or self.crop.dtype != np.uint8:
            raise ValueError(f"crop must be (h, w, 3) uint8, got {self.crop.shape} {self.crop.dtype}")
        if self.mask.shape != self.crop.shape[:2] or self.mask.dtype != bool or not self.mask.any():
            raise ValueError(f"mask must be a non-empty (h, w) bool matching crop, got {self.mask.shape}")


@dataclass(frozen=True)
class CutPasteResult:
    """A normal image with one pasted defect.

    Attributes:
        image: (H, W, 3) uint8 composite.
        mask: (H, W) bool, True where the composite differs from the normal image.
        box: (y0, x0, y1, x1) int, the pasted crop (defect plus context) clipped to the image.
    """

    image: np.ndarray
    mask: np.ndarray
    box: tuple[int, int, int, int]


def _check_image(name: str, image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{name} must be (H, W, 3) uint8, got {image.shape} {image.dtype}")


def extract_regions(
    image: np.ndarray, mask: np.ndarray, image_id: str, options: CutPasteOptions
) -> list[SupportRegion]:
    """Cut every large enough 8-connected defect component out of a support anomaly image.

    Args:
        image: (H, W, 3) uint8 anomaly image.
        mask: (H, W) bool anomaly mask of the same size.
        image_id: id recorded on each region.
        options: ``min_region_px`` (components below it are dropped) and ``context_ratio`` (margin per side).

    Returns:
        Regions in label order (row-major order of each component's first pixel); empty when none is large
        enough.
    """
    _check_image("image", image)
    if mask.shape != image.shape[:2] or mask.dtype != bool:
        raise ValueError(
            f"mask must be (H, W) bool matching image {image.shape[:2]}, got {mask.shape} {mask.dtype}"
        )
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    height, width = mask.shape
    regions = []
    for index, slices in enumerate(ndimage.find_objects(labels), start=1):
        component = labels[slices] == index
        if int(component.sum()) < options.min_region_px:
            continue
        ys, xs = slices
        my = int(round(options.context_ratio * (ys.stop - ys.start)))
        mx = int(round(options.context_ratio * (xs.stop - xs.start)))
        y0, y1 = max(ys.start - my, 0), min(ys.stop + my, height)
        x0, x1 = max(xs.start - mx, 0), min(xs.stop + mx, width)
        region_mask = labels[y0:y1, x0:x1] == index
        regions.append(SupportRegion(image[y0:y1, x0:x1].copy(), region_mask, image_id))
    return regions


def augment_region(
    region: SupportRegion, options: CutPasteOptions, image_shape: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply one random flip + rotation + scale to crop and mask together.

    Returns:
        crop (h', w', 3) float32, mask (h', w') bool and valid (h', w') bool (pixels that came from the crop).
        The output is shrunk if needed so that it fits inside ``image_shape``.
    """
    h, w = region.mask.shape
    angle = math.radians(rng.uniform(-options.max_rotation_deg, options.max_rotation_deg))
    scale = rng.uniform(*options.scale_range)
    flip_y, flip_x = rng.random() < 0.5, rng.random() < 0.5
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    forward = rot @ np.diag([-1.0 if flip_y else 1.0, -1.0 if flip_x else 1.0])
    corners = np.array([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1]], float) - [(h - 1) / 2, (w - 1) / 2]
    extent = np.abs(corners @ forward.T).max(0) * 2 + 1
    scale = min(scale, (image_shape[0] - 1) / extent[0], (image_shape[1] - 1) / extent[1])
    forward = forward * scale
    oh, ow = (int(math.ceil(e * scale)) for e in extent)
    inverse = np.linalg.inv(forward)
    offset = np.array([(h - 1) / 2, (w - 1) / 2]) - inverse @ np.array([(oh - 1) / 2, (ow - 1) / 2])

    def warp(plane: np.ndarray, order: int) -> np.ndarray:
        return ndimage.affine_transform(
            plane, inverse, offset=offset, output_shape=(oh, ow), order=order, mode="constant", cval=0.0
        )

    crop = np.stack([warp(region.crop[..., c].astype(np.float32), 1) for c in range(3)], axis=-1)
    mask = warp(region.mask.astype(np.float32), 1) >= 0.5
    valid = warp(np.ones((h, w), np.float32), 1) >= 0.999
    mask &= valid
    if not mask.any():  # a tiny defect lost to interpolation: keep its nearest-neighbour footprint
        mask = (warp(region.mask.astype(np.float32), 0) > 0) & valid
    return crop, mask, valid


def paste_region(
    normal: np.ndarray,
    foreground: np.ndarray,
    region: SupportRegion,
    options: CutPasteOptions,
    rng: np.random.Generator,
) -> CutPasteResult:
    """Paste an augmented support defect inside the foreground of a normal image.

    Args:
        normal: (H, W, 3) uint8 normal image (not modified).
        foreground: (H, W) bool foreground mask; must not be empty.
        region: the support defect.
        options: rotation / scale ranges.
        rng: the only source of randomness.

    Returns:
        The composite, the changed-pixel mask and the pasted box.
    """
    _check_image("normal", normal)
    if foreground.shape != normal.shape[:2] or foreground.dtype != bool:
        raise ValueError(
            f"foreground must be (H, W) bool matching normal, got {foreground.shape} {foreground.dtype}"
        )
    if not foreground.any():
        raise ValueError("foreground is empty: nowhere to paste")
    height, width = foreground.shape
    crop, mask, valid = augment_region(region, options, (height, width), rng)
    oh, ow = mask.shape
    my, mx = (float(v.mean()) for v in np.nonzero(mask))
    fg_y, fg_x = np.nonzero(foreground)
    best, best_overlap = (0, 0), -1.0
    for _ in range(PLACEMENT_TRIES):
        k = rng.integers(len(fg_y))
        y0 = int(np.clip(round(fg_y[k] - my), 0, height - oh))
        x0 = int(np.clip(round(fg_x[k] - mx), 0, width - ow))
        overlap = float(foreground[y0 : y0 + oh, x0 : x0 + ow][mask].mean())
        if overlap > best_overlap:
            best, best_overlap = (y0, x0), overlap
        if overlap >= MIN_FOREGROUND_OVERLAP:
            break
    y0, x0 = best
    window = normal[y0 : y0 + oh, x0 : x0 + ow].astype(np.float32)
    context = valid & ~mask
    ring = context if context.sum() >= 8 else valid
    crop = crop + (window[ring].mean(0) - crop[ring].mean(0))
    alpha = ndimage.gaussian_filter(mask.astype(np.float32), PASTE_FEATHER_PX, mode="constant", truncate=2.0)
    alpha = np.where(valid, np.minimum(2.0 * alpha, 1.0), 0.0)[..., None]
    blended = np.rint(window + alpha * (crop - window)).clip(0, 255).astype(np.uint8)
    image = normal.copy()
    image[y0 : y0 + oh, x0 : x0 + ow] = blended
    changed = np.zeros((height, width), bool)
    changed[y0 : y0 + oh, x0 : x0 + ow] = np.any(blended != normal[y0 : y0 + oh, x0 : x0 + ow], axis=-1)
    return CutPasteResult(image, changed, (y0, x0, y0 + oh, x0 + ow))
