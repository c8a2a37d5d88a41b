"""Anomaly mask generators: the paper's 8 mask types, 7 of them at three sizes (Sec. 3.1, Fig. S2).

Everything is resolution free: areas are fractions of the image (of the foreground for Perlin noise),
widths and thicknesses are pixels at 512x512 scaled by ``sqrt(H*W) / 512``, so 256x256 and 512x512 give the
same statistics. ``SHAPE_SPECS`` is the documented table of ranges; docs/masks.md lists it together with the
differences to the official code.

A local mask has 1 region (large, medium) or 1-2 regions (small) sharing the drawn area; Perlin noise has
any number of blobs. Each region is centred on a random foreground pixel, kept inside the image and re-placed
until at least half of it lies in the foreground. The union is closed (6x6 px at 512), intersected with the
foreground and checked against the documented area range. Every loop is bounded: when nothing passes, the
closest candidate is returned, and a deterministic disc at the deepest foreground pixel replaces an empty one.
The painters live in ``uniadc.mask_shapes``, the Perlin noise in ``uniadc.noise``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from schemas.priors import MASK_SHAPES, MASK_SIZES, AnomalyPrior
from uniadc.mask_shapes import (
    MIN_INSIDE,
    REF_SIDE,
    Canvas,
    ellipse,
    paint_regions,
    perlin_blobs,
    polygon,
    rectangle,
    stroke,
)

Range = tuple[float, float]
_CLOSING = 6.0  # closing footprint side, px at 512
_ATTEMPTS = 20  # whole-mask retries (area range, foreground overlap)
_MIN_SIDE = 16


@dataclass(frozen=True)
class Variant:
    """One geometric family of a mask type (ellipses are near-circular or eccentric, as in the official code).

    Attributes:
        area: drawn area of the whole mask (all regions), fraction of the image; for hollow ellipses the area
            enclosed by the outer boundary.
        aspect: short / long axis (rectangle, line, ellipse) or smallest / largest vertex radius (polygon).
        thickness: hollow-ellipse ring thickness, px at 512 (capped at half the minor semi-axis).
    """

    area: Range
    aspect: Range
    thickness: Range | None = None


@dataclass(frozen=True)
class MaskSpec:
    """Documented ranges of one (shape, size).

    Attributes:
        area: range of the final mask area, fraction of the image (of the foreground for Perlin noise); masks
            outside it are redrawn.
        max_regions: regions drawn uniformly in 1..max_regions (0 for Perlin noise: any number of blobs).
        variants: geometric families, one drawn uniformly per mask.
        smoothing: Gaussian sigma (px at 512) of the blur-and-threshold-at-0.5 corner rounding; 0 = none.
        width: brush stroke width, px at 512.
        cells: Perlin lattice cells per image side, as a range of log2.
    """

    area: Range
    max_regions: int = 1
    variants: tuple[Variant, ...] = ()
    smoothing: float = 0.0
    width: Range | None = None
    cells: tuple[int, int] | None = None


def ring_area(
    outer: np.ndarray | float, aspect: np.ndarray | float, thickness: np.ndarray | float
) -> np.ndarray:
    """Area of a hollow ellipse of outer area ``outer``, axis ratio ``aspect`` and ring ``thickness`` (in the
    unit of ``sqrt(outer)``), the thickness capped at half the minor semi-axis; broadcasts over arrays."""
    a = np.sqrt(np.asarray(outer) / (np.pi * np.asarray(aspect)))
    b = a * aspect
    t = np.minimum(thickness, b / 2)
    return np.pi * (a * b - (a - t) * (b - t))


def _solid(area: Range, aspect: Range, regions: int, smoothing: float = 0.0) -> MaskSpec:
    return MaskSpec(area=area, max_regions=regions, variants=(Variant(area, aspect),), smoothing=smoothing)


def _ellipses(
    nc: Range, ecc: Range, regions: int, nc_t: Range | None = None, ecc_t: Range | None = None
) -> MaskSpec:
    variants = (Variant(nc, (0.5, 1.0), nc_t), Variant(ecc, (0.1, 0.25), ecc_t))
    if nc_t is None:
        return MaskSpec(area=(min(nc[0], ecc[0]), max(nc[1], ecc[1])), max_regions=regions, variants=variants)
    g = np.linspace(0.0, 1.0, 41)  # ring-area bounds over the whole (area, aspect, thickness) box, at 512
    areas = [
        ring_area(
            _lerp(v.area, g[:, None, None]),
            _lerp(v.aspect, g[None, :, None]),
            _lerp(v.thickness, g[None, None, :]) / REF_SIDE,
        )
        for v in variants
    ]
    bounds = (float(min(a.min() for a in areas)), float(max(a.max() for a in areas)))
    return MaskSpec(area=bounds, max_regions=regions, variants=variants)


def _lerp(r: Range, t: np.ndarray) -> np.ndarray:
    return r[0] + t * (r[1] - r[0])


SHAPE_SPECS: dict[tuple[str, str], MaskSpec] = {
    ("rectangle", "large"): _solid((0.05, 0.10), (0.3, 1.0), 1, smoothing=3.8),
    ("rectangle", "medium"): _solid((0.01, 0.04), (0.3, 1.0), 1, smoothing=2.6),
    ("rectangle", "small"): _solid((0.005, 0.01), (0.3, 1.0), 2, smoothing=1.4),
    ("line", "large"): _solid((0.01, 0.02), (0.05, 0.1), 1, smoothing=1.4),
    ("line", "medium"): _solid((0.005, 0.01), (0.02, 0.05), 1, smoothing=1.1),
    ("line", "small"): _solid((0.002, 0.005), (0.01, 0.02), 2, smoothing=0.8),
    ("polygon", "large"): _solid((0.01, 0.03), (0.3, 1.0), 1, smoothing=3.8),
    ("polygon", "medium"): _solid((0.005, 0.01), (0.3, 1.0), 1, smoothing=2.6),
    ("polygon", "small"): _solid((0.002, 0.005), (0.3, 1.0), 2, smoothing=1.4),
    ("ellipse", "large"): _ellipses((0.015, 0.03), (0.01, 0.02), 1),
    ("ellipse", "medium"): _ellipses((0.005, 0.015), (0.005, 0.008), 1),
    ("ellipse", "small"): _ellipses((0.0002, 0.001), (0.002, 0.005), 2),
    ("hollow_ellipse", "large"): _ellipses((0.015, 0.03), (0.01, 0.02), 1, (12, 24), (12, 20)),
    ("hollow_ellipse", "medium"): _ellipses((0.005, 0.015), (0.005, 0.008), 1, (8, 16), (8, 12)),
    ("hollow_ellipse", "small"): _ellipses((0.001, 0.005), (0.002, 0.005), 2, (4, 10), (4, 8)),
    ("random_brush", "large"): MaskSpec(area=(0.015, 0.045), width=(18, 24)),
    ("random_brush", "medium"): MaskSpec(area=(0.006, 0.02), width=(12, 18)),
    ("random_brush", "small"): MaskSpec(area=(0.002, 0.008), max_regions=2, width=(6, 12)),
    ("perlin", "large"): MaskSpec(area=(0.02, 0.40), max_regions=0, cells=(0, 1)),
    ("perlin", "medium"): MaskSpec(area=(0.01, 0.15), max_regions=0, cells=(2, 3)),
    ("perlin", "small"): MaskSpec(area=(0.03, 0.08), max_regions=0, cells=(4, 5)),
}


@dataclass(frozen=True)
class MaskDraw:
    """One drawn mask and its type.

    Attributes:
        mask: (H, W) bool, True inside the anomaly; non-empty and inside the effective foreground.
        shape: one of ``schemas.priors.MASK_SHAPES``.
        size: ``"large"``/``"medium"``/``"small"``; None for the foreground mask.
    """

    mask: np.ndarray
    shape: str
    size: str | None


def effective_foreground(
    foreground: np.ndarray | None, height: int, width: int, ignore: bool = False, min_fraction: float = 0.05
) -> np.ndarray:
    """The region masks are confined to: the foreground, or the whole image if it is missing, ignored or tiny.

    Args:
        foreground: (H, W) bool object mask, or None.
        height: image height H.
        width: image width W.
        ignore: the prior says to ignore the foreground (``AnomalyPrior.ignore_foreground``).
        min_fraction: foregrounds covering less than this fraction of the image give the whole image.

    Returns:
        (H, W) bool, a new array.
    """
    _check_size(height, width)
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    if foreground is not None:
        _check_foreground(foreground, height, width)
    if foreground is None or ignore or not foreground.any() or foreground.mean() < min_fraction:
        return np.ones((height, width), dtype=bool)
    return foreground.copy()


def generate_mask(
    shape: str,
    size: str | None,
    height: int,
    width: int,
    rng: np.random.Generator,
    foreground: np.ndarray | None = None,
) -> np.ndarray:
    """Draw one mask of a given type.

    Args:
        shape: one of ``MASK_SHAPES``.
        size: one of ``MASK_SIZES``; None for ``"foreground"``.
        height: H, at least 16.
        width: W, at least 16.
        rng: the only source of randomness.
        foreground: (H, W) bool region the mask must stay in (see :func:`effective_foreground`); None = the
            whole image.

    Returns:
        (H, W) bool, non-empty, False outside the foreground.
    """
    if shape not in MASK_SHAPES:
        raise ValueError(f"shape must be one of {MASK_SHAPES}, got {shape!r}")
    if shape == "foreground" and size is not None:
        raise ValueError(f"size must be None for the foreground mask, got {size!r}")
    if shape != "foreground" and size not in MASK_SIZES:
        raise ValueError(f"size must be one of {MASK_SIZES} for shape {shape!r}, got {size!r}")
    _check_size(height, width)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if foreground is None:
        foreground = np.ones((height, width), dtype=bool)
    _check_foreground(foreground, height, width)
    if not foreground.any():
        raise ValueError("foreground is empty; pass effective_foreground(...) instead")
    if shape == "foreground":
        return foreground.copy()
    spec = SHAPE_SPECS[(shape, size)]
    cv = Canvas(height, width, foreground, rng)
    if shape == "perlin":
        return _accept(cv, spec, lambda: perlin_blobs(cv, spec), per_foreground=True)
    painters = {"rectangle": rectangle, "line": rectangle, "polygon": polygon, "random_brush": stroke}
    region = painters.get(shape, ellipse)
    return _accept(cv, spec, lambda: paint_regions(cv, spec, region), per_foreground=False)


def draw_mask(
    prior: AnomalyPrior,
    foreground: np.ndarray | None,
    rng: np.random.Generator,
    height: int | None = None,
    width: int | None = None,
) -> MaskDraw:
    """Draw a mask for one defect category, honouring its shape/size priors and foreground rule.

    A (shape, size) pair is picked uniformly from ``prior.mask_types()``; the foreground is replaced by the
    whole image when ``prior.ignore_foreground`` is set or it covers less than 5 % of the image.

    Args:
        prior: the category's prior.
        foreground: (H, W) bool object mask, or None (whole image).
        rng: the only source of randomness.
        height: H; defaults to the foreground's height (required without a foreground).
        width: W; defaults to the foreground's width (required without a foreground).

    Returns:
        A :class:`MaskDraw`.
    """
    if foreground is not None and foreground.ndim == 2:
        height = foreground.shape[0] if height is None else height
        width = foreground.shape[1] if width is None else width
    if height is None or width is None:
        raise ValueError(f"height and width are required without a foreground, got {height}, {width}")
    fg = effective_foreground(foreground, height, width, ignore=prior.ignore_foreground)
    pairs = prior.mask_types()
    shape, size = pairs[int(rng.integers(len(pairs)))]
    return MaskDraw(mask=generate_mask(shape, size, height, width, rng, fg), shape=shape, size=size)


def _accept(cv: Canvas, spec: MaskSpec, render: Callable[[], np.ndarray], per_foreground: bool) -> np.ndarray:
    """Render until the area is in range and the mask lies in the foreground; bounded and never empty."""
    lo, hi = spec.area
    best, best_miss = None, math.inf
    for _ in range(_ATTEMPTS):
        raw = _close(render(), cv.scale)
        clipped = raw if cv.whole else raw & cv.fg
        n = int(clipped.sum())
        if n == 0:
            continue
        area = n / cv.fg_count if per_foreground else float(raw.sum()) / raw.size
        inside = 1.0 if per_foreground or cv.whole else n / float(raw.sum())
        miss = max(lo - area, area - hi, 0.0) / lo + max(MIN_INSIDE - inside, 0.0)
        if miss == 0.0:
            return clipped
        if miss < best_miss:
            best, best_miss = clipped, miss
    return best if best is not None else _fallback_disc(cv, lo)


def _close(mask: np.ndarray, scale: float) -> np.ndarray:
    """Morphological closing with a square of 6 px at 512 (3 at 256), on the padded bounding box only."""
    k = round(_CLOSING * scale)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0 or k < 2:
        return mask
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dilated = ndimage.maximum_filter(np.pad(mask[y0:y1, x0:x1], k).view(np.uint8), k, mode="constant")
    closed = ndimage.minimum_filter(dilated, k, mode="constant", origin=-1 if k % 2 == 0 else 0) > 0
    out = mask.copy()
    out[y0:y1, x0:x1] |= closed[k:-k, k:-k]
    return out


def _fallback_disc(cv: Canvas, area: float) -> np.ndarray:
    """Deterministic last resort: a disc of the smallest documented area at the deepest foreground pixel."""
    depth = ndimage.distance_transform_edt(np.pad(cv.fg, 1))[1:-1, 1:-1]
    cy, cx = np.unravel_index(int(np.argmax(depth)), depth.shape)
    radius = max(1.0, math.sqrt(area * cv.height * cv.width / math.pi))
    yy, xx = np.ogrid[: cv.height, : cv.width]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) & cv.fg


def _check_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < _MIN_SIDE:
            raise ValueError(f"{name} must be an int >= {_MIN_SIDE}, got {value!r}")


def _check_foreground(foreground: np.ndarray, height: int, width: int) -> None:
    ok = isinstance(foreground, np.ndarray) and foreground.dtype == bool
    if not ok or foreground.shape != (height, width):
        got = (getattr(foreground, "shape", None), getattr(foreground, "dtype", type(foreground).__name__))
        raise ValueError(f"foreground must be a ({height}, {width}) bool array, got {got}")
