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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from schemas.priors import MASK_SHAPES, MASK_SIZES, AnomalyPrior

Range = tuple[float, float]
Crop = tuple[np.ndarray, int, int]  # (h, w) bool patch and its top-left (y0, x0) in the image
Painter = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (dy column, dx row) offsets from centre -> bool
Placer = Callable[[], Crop]  # paints one region at a new random place on each call
_REF = 512.0  # pixel quantities in SHAPE_SPECS are given at 512x512
_CLOSING = 6.0  # closing footprint side, px at 512
_MIN_INSIDE = 0.5  # a region must lie at least this much inside the foreground
_ATTEMPTS = 20  # whole-mask retries (area range, foreground overlap)
_PLACEMENTS = 6  # placements per region and attempt
_MIN_SIDE = 16
_EIGHT = np.ones((3, 3), dtype=bool)


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


def ring_area(outer: np.ndarray | float, aspect: np.ndarray | float, thickness: np.ndarray | float
              ) -> np.ndarray:
    """Area of a hollow ellipse of outer area ``outer``, axis ratio ``aspect`` and ring ``thickness`` (in the
    unit of ``sqrt(outer)``), the thickness capped at half the minor semi-axis; broadcasts over arrays."""
    a = np.sqrt(np.asarray(outer) / (np.pi * np.asarray(aspect)))
    b = a * aspect
    t = np.minimum(thickness, b / 2)
    return np.pi * (a * b - (a - t) * (b - t))


def _solid(area: Range, aspect: Range, regions: int, smoothing: float = 0.0) -> MaskSpec:
    return MaskSpec(area=area, max_regions=regions, variants=(Variant(area, aspect),), smoothing=smoothing)


def _ellipses(nc: Range, ecc: Range, regions: int, nc_t: Range | None = None,
              ecc_t: Range | None = None) -> MaskSpec:
    variants = (Variant(nc, (0.5, 1.0), nc_t), Variant(ecc, (0.1, 0.25), ecc_t))
    if nc_t is None:
        return MaskSpec(area=(min(nc[0], ecc[0]), max(nc[1], ecc[1])), max_regions=regions, variants=variants)
    g = np.linspace(0.0, 1.0, 41)  # ring-area bounds over the whole (area, aspect, thickness) box, at 512
    areas = [ring_area(_lerp(v.area, g[:, None, None]), _lerp(v.aspect, g[None, :, None]),
                       _lerp(v.thickness, g[None, None, :]) / _REF) for v in variants]
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


def effective_foreground(foreground: np.ndarray | None, height: int, width: int, ignore: bool = False,
                         min_fraction: float = 0.05) -> np.ndarray:
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


def generate_mask(shape: str, size: str | None, height: int, width: int, rng: np.random.Generator,
                  foreground: np.ndarray | None = None) -> np.ndarray:
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
    cv = _Canvas(height, width, foreground, rng)
    if shape == "perlin":
        return _accept(cv, spec, lambda: _perlin(cv, spec), per_foreground=True)
    if shape == "random_brush":
        return _accept(cv, spec, lambda: _regions(cv, spec, _stroke), per_foreground=False)
    region = {"rectangle": _rectangle, "line": _rectangle, "polygon": _polygon}.get(shape, _ellipse)
    return _accept(cv, spec, lambda: _regions(cv, spec, region), per_foreground=False)


def draw_mask(prior: AnomalyPrior, foreground: np.ndarray | None, rng: np.random.Generator,
              height: int | None = None, width: int | None = None) -> MaskDraw:
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


def _accept(cv: _Canvas, spec: MaskSpec, render: Callable[[], np.ndarray], per_foreground: bool
            ) -> np.ndarray:
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
        miss = max(lo - area, area - hi, 0.0) / lo + max(_MIN_INSIDE - inside, 0.0)
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


def _fallback_disc(cv: _Canvas, area: float) -> np.ndarray:
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


# ------------------------------------------------------------------------------------------------ geometry


class _Canvas:
    """Image size, foreground and generator shared by the painters of one ``generate_mask`` call."""

    def __init__(self, height: int, width: int, fg: np.ndarray, rng: np.random.Generator) -> None:
        self.height, self.width, self.fg, self.rng = height, width, fg, rng
        self.scale = math.sqrt(height * width) / _REF
        self.fg_count = int(fg.sum())
        self.whole = self.fg_count == height * width
        self._pixels = None if self.whole else np.flatnonzero(fg)

    def centre(self, ey: float, ex: float) -> tuple[float, float]:
        """A random centre on the foreground such that a box of half-extents (ey, ex) stays in the image."""
        (ly, hy), (lx, hx) = _window(ey, self.height), _window(ex, self.width)
        if self.whole:
            return self.rng.uniform(ly, hy), self.rng.uniform(lx, hx)
        ys, xs = np.divmod(self._pixels[self.rng.integers(self._pixels.size, size=32)], self.width)
        ok = np.flatnonzero((ys >= ly) & (ys <= hy) & (xs >= lx) & (xs <= hx))
        if ok.size == 0:  # the window and the foreground barely meet: search all foreground pixels
            ys, xs = np.divmod(self._pixels, self.width)
            ok = np.flatnonzero((ys >= ly) & (ys <= hy) & (xs >= lx) & (xs <= hx))
            ok = ok[self.rng.integers(ok.size, size=1)] if ok.size else self.rng.integers(ys.size, size=1)
        return ys[ok[0]] + self.rng.uniform(-0.5, 0.5), xs[ok[0]] + self.rng.uniform(-0.5, 0.5)

    def inside(self, crop: Crop) -> float:
        """Fraction of a painted crop that lies in the foreground."""
        patch, y0, x0 = crop
        n = int(patch.sum())
        fg = self.fg[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]]
        return float((patch & fg).sum()) / n if n else 0.0


def _window(extent: float, side: int) -> tuple[float, float]:
    lo, hi = extent, side - 1 - extent
    return (lo, hi) if lo <= hi else ((side - 1) / 2, (side - 1) / 2)


def _regions(cv: _Canvas, spec: MaskSpec, region: Callable[..., Placer]) -> np.ndarray:
    """Union of 1..max_regions regions sharing a drawn area (30/70 to 70/30 for two), each re-placed until at
    least half of it lies in the foreground."""
    out = np.zeros((cv.height, cv.width), dtype=bool)
    variant = spec.variants[int(cv.rng.integers(len(spec.variants)))] if spec.variants else None
    total = cv.rng.uniform(*(variant.area if variant else spec.area)) * cv.height * cv.width
    f = cv.rng.uniform(0.3, 0.7) if int(cv.rng.integers(1, spec.max_regions + 1)) == 2 else 1.0
    for part in (total * f, total * (1 - f)) if f < 1 else (total,):
        place = region(cv, spec, variant, part)
        best, best_inside = None, -1.0
        for _ in range(_PLACEMENTS):
            crop = place()
            inside = cv.inside(crop)
            if inside > best_inside:
                best, best_inside = crop, inside
            if inside >= _MIN_INSIDE:
                break
        patch, y0, x0 = best
        out[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] |= patch
    return out


def _placer(cv: _Canvas, spec: MaskSpec, ey: float, ex: float, painter: Painter) -> Placer:
    """Paint a fixed shape at a new random centre on each call (optional blur-and-threshold rounding); the
    region is its largest 8-connected piece."""
    sigma = spec.smoothing * cv.scale
    pad = math.ceil(3 * sigma) + 1

    def place() -> Crop:
        cy, cx = cv.centre(ey, ex)
        y0, y1 = max(0, math.floor(cy - ey) - pad), min(cv.height, math.ceil(cy + ey) + pad + 1)
        x0, x1 = max(0, math.floor(cx - ex) - pad), min(cv.width, math.ceil(cx + ex) + pad + 1)
        patch = painter((np.arange(y0, y1) - cy)[:, None], (np.arange(x0, x1) - cx)[None, :])
        if sigma > 0:
            patch = ndimage.gaussian_filter(patch.astype(np.float32), sigma, mode="constant") >= 0.5
        labels, n = ndimage.label(patch, _EIGHT)
        if n > 1:  # sub-pixel tips (thin rings, spikes) can rasterise apart: a region is one piece
            patch = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
        return patch, y0, x0

    return place


def _rectangle(cv: _Canvas, spec: MaskSpec, v: Variant, area: float) -> Placer:
    """Rotated rectangle (or line) of ``area`` px; the short side is at least 1 px."""
    short = max(1.0, math.sqrt(area * cv.rng.uniform(*v.aspect)))
    hl, hs = area / short / 2, short / 2
    phi = cv.rng.uniform(0, math.pi)
    c, s = math.cos(phi), math.sin(phi)
    ex, ey = abs(c) * hl + abs(s) * hs, abs(s) * hl + abs(c) * hs
    return _placer(cv, spec, ey, ex,
                   lambda dy, dx: (np.abs(dx * c + dy * s) <= hl) & (np.abs(dy * c - dx * s) <= hs))


def _polygon(cv: _Canvas, spec: MaskSpec, v: Variant, area: float) -> Placer:
    """Star-shaped polygon: 10-21 vertices at sorted random angles, radii U(aspect, 1), scaled to ``area``."""
    n = int(cv.rng.integers(10, 22))
    theta = np.sort(cv.rng.uniform(0, 2 * math.pi, n))
    rho = cv.rng.uniform(cv.rng.uniform(*v.aspect), 1.0, n)
    px, py = rho * np.cos(theta), rho * np.sin(theta)
    k = math.sqrt(area / max(0.5 * abs(np.dot(px, np.roll(py, -1)) - np.dot(py, np.roll(px, -1))), 1e-12))
    px, py = px * k, py * k

    def painter(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        inside = np.zeros((dy.shape[0], dx.shape[1]), dtype=bool)
        for i in range(n):  # even-odd rule, one edge at a time
            yi, xi, yj, xj = py[i], px[i], py[i - 1], px[i - 1]
            if yi != yj:
                inside ^= ((yi > dy) != (yj > dy)) & (dx < (xj - xi) * (dy - yi) / (yj - yi) + xi)
        return inside

    return _placer(cv, spec, float(np.abs(py).max()), float(np.abs(px).max()), painter)


def _ellipse(cv: _Canvas, spec: MaskSpec, v: Variant, area: float) -> Placer:
    """Rotated ellipse enclosing ``area`` px (pi*a*b); a ring of the variant's thickness when it has one."""
    asp = cv.rng.uniform(*v.aspect)
    a = math.sqrt(area / (math.pi * asp))
    b = a * asp
    t = None if v.thickness is None else min(max(cv.rng.uniform(*v.thickness) * cv.scale, 1.0), b / 2)
    phi = cv.rng.uniform(0, math.pi)
    c, s = math.cos(phi), math.sin(phi)

    def painter(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        u, w = dx * c + dy * s, dy * c - dx * s
        out = (u / a) ** 2 + (w / b) ** 2 <= 1.0
        if t is not None:
            out &= (u / (a - t)) ** 2 + (w / (b - t)) ** 2 > 1.0
        return out

    return _placer(cv, spec, math.hypot(a * s, b * c), math.hypot(a * c, b * s), painter)


def _stroke(cv: _Canvas, spec: MaskSpec, v: None, area: float) -> Placer:
    """A brush stroke: the official zig-zag walk (9 segments of N(L, L/2) px, L = sqrt(2)*side/8, alternating
    turns of 2pi/5 +- 2pi/15) in a random direction, reflected at the border and grown segment by segment
    (round joints) until it covers ``area`` px."""
    r = cv.rng.uniform(*spec.width) * cv.scale / 2
    h, w, rng = cv.height, cv.width, cv.rng
    avg = math.sqrt(2 * h * w) / 8

    def place() -> Crop:
        y, x = cv.centre(r, r)
        base, mean, spread = rng.uniform(0, 2 * math.pi), 2 * math.pi / 5, 2 * math.pi / 15
        lo, hi = mean - rng.uniform(0, spread), mean + rng.uniform(0, spread)
        pts = [(y, x)]
        for i in range(9):
            theta = base + rng.uniform(lo, hi) * (1 if i % 2 else -1)
            step = float(np.clip(rng.normal(avg, avg / 2), avg / 4, 2 * avg))
            y, x = _reflect(y + step * math.sin(theta), r, h), _reflect(x + step * math.cos(theta), r, w)
            pts.append((y, x))
        p = np.asarray(pts)
        y0, x0 = max(0, math.floor(p[:, 0].min() - r) - 1), max(0, math.floor(p[:, 1].min() - r) - 1)
        y1, x1 = min(h, math.ceil(p[:, 0].max() + r) + 2), min(w, math.ceil(p[:, 1].max() + r) + 2)
        patch = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        drawn, p = 0, p - (y0, x0)
        a = p[0]
        for b in p[1:]:
            deficit = area - drawn
            if deficit <= 0.02 * area:
                break
            length = float(np.hypot(*(b - a)))
            if length * 2 * r > deficit:  # the last piece: shorten it, the stroke goes on from its end
                b = a + (b - a) * (deficit / (2 * r) / length)
            drawn += _capsule(patch, a, b, r)
            a = b
        return patch, y0, x0

    return place


def _reflect(value: float, margin: float, side: int) -> float:
    lo, hi = margin, side - 1 - margin
    if lo >= hi:
        return (side - 1) / 2
    value = 2 * lo - value if value < lo else value
    value = 2 * hi - value if value > hi else value
    return float(np.clip(value, lo, hi))


def _capsule(patch: np.ndarray, a: np.ndarray, b: np.ndarray, r: float) -> int:
    """Paint the points within r of segment ab into ``patch`` (in place); returns the number of new pixels."""
    y0, y1 = max(0, math.floor(min(a[0], b[0]) - r)), min(patch.shape[0], math.ceil(max(a[0], b[0]) + r) + 1)
    x0, x1 = max(0, math.floor(min(a[1], b[1]) - r)), min(patch.shape[1], math.ceil(max(a[1], b[1]) + r) + 1)
    qy, qx = np.arange(y0, y1)[:, None] - a[0], np.arange(x0, x1)[None, :] - a[1]
    dy, dx = b[0] - a[0], b[1] - a[1]
    t = np.clip((qy * dy + qx * dx) / max(dy * dy + dx * dx, 1e-12), 0.0, 1.0)
    cap = (qy - t * dy) ** 2 + (qx - t * dx) ** 2 <= r * r
    sub = patch[y0:y1, x0:x1]
    new = int((cap & ~sub).sum())
    sub |= cap
    return new


def _perlin(cv: _Canvas, spec: MaskSpec) -> np.ndarray:
    """Perlin noise (quintic fade, sqrt(2)-scaled as in the official code) > 0.5 on a lattice of 2^k cells per
    side, rotated by U(-90, 90) degrees about the centre. The noise is evaluated at rotated coordinates (no
    empty corners), every ``step`` px with at least 8 samples per cell, linearly interpolated in between."""
    rng, h, w = cv.rng, cv.height, cv.width
    cells_y, cells_x = 2.0 ** rng.integers(spec.cells[0], spec.cells[1] + 1, size=2)
    phi = rng.uniform(-math.pi / 2, math.pi / 2)
    c, s = math.cos(phi), math.sin(phi)
    step = 2 ** int(np.clip(math.floor(math.log2(min(h / cells_y, w / cells_x) / 8)), 0, 4))
    yy = (np.arange(-(-h // step) + 1, dtype=np.float32) * step - (h - 1) / 2)[:, None]
    xx = (np.arange(-(-w // step) + 1, dtype=np.float32) * step - (w - 1) / 2)[None, :]
    # lattice frame from the corners of the image grown by 1/8 (covers the last sample row/column, as
    # step <= side / 8): resolution free, so equal seeds give the same noise field at every resolution
    ky, kx = np.array([-4, -4, 5, 5]) * (h / 8), np.array([-4, 5, -4, 5]) * (w / 8)
    kv, ku = (ky * c + kx * s) * (cells_y / h), (kx * c - ky * s) * (cells_x / w)
    v0, u0 = kv.min() - rng.uniform(0, 1), ku.min() - rng.uniform(0, 1)
    v = np.maximum((yy * c + xx * s) * (cells_y / h) - v0, 0)
    u = np.maximum((xx * c - yy * s) * (cells_x / w) - u0, 0)
    rows, cols = int(kv.max() - v0) + 2, int(ku.max() - u0) + 2
    angles = rng.uniform(0, 2 * math.pi, rows * cols)
    gy, gx = np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)
    i, j = v.astype(np.intp), u.astype(np.intp)
    fv, fu, node = v - i, u - j, i * cols + j

    def corner(di: int, dj: int) -> np.ndarray:
        k = node + (di * cols + dj)
        return gy.take(k) * (fv - di) + gx.take(k) * (fu - dj)

    tv, tu = _fade(fv), _fade(fu)
    n00, n10 = corner(0, 0), corner(1, 0)
    top = n00 + tu * (corner(0, 1) - n00)
    noise = top + tv * (n10 + tu * (corner(1, 1) - n10) - top)
    return _upsample(noise, step, h, w) > 0.5 / math.sqrt(2)


def _upsample(coarse: np.ndarray, step: int, h: int, w: int) -> np.ndarray:
    """Separable linear interpolation of samples taken every ``step`` px onto an (h, w) grid."""
    if step == 1:
        return coarse[:h, :w]
    t = np.arange(step, dtype=np.float32) / step
    a, b = coarse[:, :-1, None], coarse[:, 1:, None]
    rows = (a + (b - a) * t).reshape(coarse.shape[0], -1)[:, :w]
    a, b = rows[:-1, None, :], rows[1:, None, :]
    return (a + (b - a) * t[:, None]).reshape(-1, w)[:h]


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)
