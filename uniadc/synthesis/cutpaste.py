"""Few-shot cut-paste of real anomaly support regions (paper §3.3).

:func:`extract_regions` splits a support anomaly mask into 8-connected components, drops those smaller than
``min_region_px`` pixels and crops each with a ``context_ratio`` margin (of the component's box height/width)
on every side, never beyond the picture (the image minus any letterbox padding). It records which picture
edges the component touches (within ``EDGE_PX``): a chip broken off a tile's edge or a crack running out of it.

:func:`paste_region` applies one random flip/rotation/scale to crop and mask together, places the defect so
that at least half of it lies inside the destination foreground (the best of ``PLACEMENT_TRIES`` draws
otherwise), matches the crop's context brightness to the destination and blends the defect with a feathered
alpha (Gaussian sigma ``PASTE_FEATHER_PX``). A defect that touched a picture edge keeps that relation: it is
rotated by multiples of 90 degrees only (the drawn angle rounded) and placed flush against the destination
foreground's edge on the side its source edge maps to, so an edge chip is never rendered as a hole in the
middle of the tile. Only the defect (not its context rectangle) is pasted; the context is kept for SSIM scoring.
The returned mask is the transformed support annotation together with every pixel that changed, holes filled,
so a defect pixel that happens to match the destination is still labelled; it lies inside the returned box.
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
EDGE_PX = 2  # a component this close to a picture edge touches it (resizing blurs the last pixel or two)
SIDES = ("top", "bottom", "left", "right")
_NORMALS = {"top": (-1.0, 0.0), "bottom": (1.0, 0.0), "left": (0.0, -1.0), "right": (0.0, 1.0)}


@dataclass(frozen=True)
class SupportRegion:
    """One real defect with context, cut from a support anomaly image.

    Attributes:
        crop: (h, w, 3) uint8 image crop including the context margin.
        mask: (h, w) bool, True on the component's pixels inside the crop.
        source_image_id: id of the support image it came from.
        sides: the picture edges (``top``, ``bottom``, ``left``, ``right``) the component touches; the crop
            ends at each of them.
    """

    crop: np.ndarray
    mask: np.ndarray
    source_image_id: str
    sides: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not set(self.sides) <= set(SIDES):
            raise ValueError(f"sides must be a subset of {SIDES}, got {sorted(self.sides)}")
        if self.crop.ndim != 3 or self.crop.shape[-1] != 3 or self.crop.dtype != np.uint8:
            raise ValueError(f"crop must be (h, w, 3) uint8, got {self.crop.shape} {self.crop.dtype}")
        if self.mask.shape != self.crop.shape[:2] or self.mask.dtype != bool or not self.mask.any():
            raise ValueError(f"mask must be a non-empty (h, w) bool matching crop, got {self.mask.shape}")


@dataclass(frozen=True)
class CutPasteResult:
    """A normal image with one pasted defect.

    Attributes:
        image: (H, W, 3) uint8 composite.
        mask: (H, W) bool defect label: the placed support annotation plus every changed pixel, holes filled.
        box: (y0, x0, y1, x1) int, the pasted crop (defect plus context) clipped to the image.
    """

    image: np.ndarray
    mask: np.ndarray
    box: tuple[int, int, int, int]


def _check_image(name: str, image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{name} must be (H, W, 3) uint8, got {image.shape} {image.dtype}")


def _picture_box(valid: np.ndarray | None, height: int, width: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the picture: the bounding box of ``valid``, or the whole image."""
    if valid is None:
        return 0, height, 0, width
    if valid.shape != (height, width) or valid.dtype != bool or not valid.any():
        raise ValueError(
            f"valid must be a non-empty ({height}, {width}) bool picture mask, got {valid.shape}"
        )
    ys, xs = np.nonzero(valid)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def extract_regions(
    image: np.ndarray,
    mask: np.ndarray,
    image_id: str,
    options: CutPasteOptions,
    valid: np.ndarray | None = None,
) -> list[SupportRegion]:
    """Cut every large enough 8-connected defect component out of a support anomaly image.

    Args:
        image: (H, W, 3) uint8 anomaly image.
        mask: (H, W) bool anomaly mask of the same size.
        image_id: id recorded on each region.
        options: ``min_region_px`` (components below it are dropped) and ``context_ratio`` (margin per side).
        valid: (H, W) bool, the picture's pixels (letterbox padding False); ``None``: the whole image. Crops
            stop at the picture's bounding box and ``sides`` names the edges of that box a component touches.

    Returns:
        Regions in label order (row-major order of each component's first pixel); empty when none is large
        enough.
    """
    _check_image("image", image)
    if mask.shape != image.shape[:2] or mask.dtype != bool:
        raise ValueError(
            f"mask must be (H, W) bool matching image {image.shape[:2]}, got {mask.shape} {mask.dtype}"
        )
    height, width = mask.shape
    top, bottom, left, right = _picture_box(valid, height, width)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    regions = []
    for index, slices in enumerate(ndimage.find_objects(labels), start=1):
        component = labels[slices] == index
        if int(component.sum()) < options.min_region_px:
            continue
        ys, xs = slices
        my = int(round(options.context_ratio * (ys.stop - ys.start)))
        mx = int(round(options.context_ratio * (xs.stop - xs.start)))
        y0, y1 = max(ys.start - my, top), min(ys.stop + my, bottom)
        x0, x1 = max(xs.start - mx, left), min(xs.stop + mx, right)
        region_mask = labels[y0:y1, x0:x1] == index
        touches = {
            "top": ys.start < top + EDGE_PX,
            "bottom": ys.stop > bottom - EDGE_PX,
            "left": xs.start < left + EDGE_PX,
            "right": xs.stop > right - EDGE_PX,
        }
        sides = frozenset(side for side, hit in touches.items() if hit)
        regions.append(SupportRegion(image[y0:y1, x0:x1].copy(), region_mask, image_id, sides))
    return regions


def augment_region(
    region: SupportRegion, options: CutPasteOptions, image_shape: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, frozenset[str]]:
    """Apply one random flip + rotation + scale to crop and mask together.

    A region that touches a picture edge is rotated by the drawn angle rounded to a multiple of 90 degrees,
    so its edge stays straight and axis-aligned.

    Returns:
        crop (h', w', 3) float32, mask (h', w') bool, valid (h', w') bool (pixels that came from the crop)
        and the output sides the region's picture edges map to. The output is shrunk if needed so that it
        fits inside ``image_shape``; rows and columns at its border that hold no crop pixel are trimmed.
    """
    h, w = region.mask.shape
    degrees = rng.uniform(-options.max_rotation_deg, options.max_rotation_deg)
    if region.sides:
        degrees = 90.0 * round(degrees / 90.0)
    angle = math.radians(degrees)
    scale = rng.uniform(*options.scale_range)
    flip_y, flip_x = rng.random() < 0.5, rng.random() < 0.5
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    if region.sides:
        rot = np.rint(rot)
    forward = rot @ np.diag([-1.0 if flip_y else 1.0, -1.0 if flip_x else 1.0])
    sides = frozenset(_mapped_side(forward, side) for side in region.sides)
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
    rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
    keep = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    return crop[keep], mask[keep], valid[keep], sides


def _mapped_side(forward: np.ndarray, side: str) -> str:
    """The output side an axis-aligned transform (a D4 element, (y, x) order) sends ``side`` to."""
    dy, dx = np.rint(forward @ np.array(_NORMALS[side])).astype(int)
    return {(-1, 0): "top", (1, 0): "bottom", (0, -1): "left", (0, 1): "right"}[(int(dy), int(dx))]


def _flush(
    foreground: np.ndarray, sides: frozenset[str], y: int, x: int, oh: int, ow: int, my: float, mx: float
) -> tuple[int, int]:
    """Top-left corner that puts the crop's ``sides`` on the foreground's edge through pixel (y, x).

    Without sides, the crop's defect centre (my, mx) goes on (y, x).
    """
    height, width = foreground.shape
    y0, x0 = round(y - my), round(x - mx)
    column, row = np.flatnonzero(foreground[:, x]), np.flatnonzero(foreground[y])
    if "top" in sides:
        y0 = int(column[0])
    elif "bottom" in sides:
        y0 = int(column[-1]) + 1 - oh
    if "left" in sides:
        x0 = int(row[0])
    elif "right" in sides:
        x0 = int(row[-1]) + 1 - ow
    return int(np.clip(y0, 0, height - oh)), int(np.clip(x0, 0, width - ow))


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
        The composite, its defect label (placed annotation plus changed pixels, holes filled) and the box.
    """
    _check_image("normal", normal)
    if foreground.shape != normal.shape[:2] or foreground.dtype != bool:
        raise ValueError(
            f"foreground must be (H, W) bool matching normal, got {foreground.shape} {foreground.dtype}"
        )
    if not foreground.any():
        raise ValueError("foreground is empty: nowhere to paste")
    height, width = foreground.shape
    crop, mask, valid, sides = augment_region(region, options, (height, width), rng)
    oh, ow = mask.shape
    my, mx = (float(v.mean()) for v in np.nonzero(mask))
    fg_y, fg_x = np.nonzero(foreground)
    best, best_overlap = (0, 0), -1.0
    for _ in range(PLACEMENT_TRIES):
        k = rng.integers(len(fg_y))
        y0, x0 = _flush(foreground, sides, int(fg_y[k]), int(fg_x[k]), oh, ow, my, mx)
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
    label = np.zeros((height, width), bool)
    changed = np.any(blended != normal[y0 : y0 + oh, x0 : x0 + ow], axis=-1)
    label[y0 : y0 + oh, x0 : x0 + ow] = ndimage.binary_fill_holes(mask | changed)
    return CutPasteResult(image, label, (y0, x0, y0 + oh, x0 + ow))
