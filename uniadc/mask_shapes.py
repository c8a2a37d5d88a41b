"""Shape painters behind :func:`uniadc.masks.generate_mask`: where a region goes and what it looks like.

Every painter works on a :class:`Canvas` (image size, foreground, generator) and a
:class:`uniadc.masks.MaskSpec`; lengths in the specs are pixels at 512x512, scaled by ``Canvas.scale``. Local
shapes are painted on a crop around a random foreground centre (:func:`paint_regions` re-places a region until
at least ``MIN_INSIDE`` of it lies in the foreground); Perlin blobs cover the whole image. Acceptance (area
range, closing, clipping to the foreground) is left to ``uniadc.masks``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from uniadc.noise import coarse_step, perlin

if TYPE_CHECKING:
    from uniadc.masks import MaskSpec, Variant

Crop = tuple[np.ndarray, int, int]  # (h, w) bool patch and its top-left (y0, x0) in the image
Painter = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (dy column, dx row) offsets from centre -> bool
Placer = Callable[[], Crop]  # paints one region at a new random place on each call
RegionPainter = Callable[["Canvas", "MaskSpec", "Variant | None", float], Placer]  # (cv, spec, variant, px)
REF_SIDE = 512.0  # pixel quantities in the specs are given at 512x512
MIN_INSIDE = 0.5  # a region must lie at least this much inside the foreground
_PLACEMENTS = 6  # placements per region and attempt
_EIGHT = np.ones((3, 3), dtype=bool)


class Canvas:
    """Image size, foreground and generator shared by the painters of one ``generate_mask`` call.

    Args:
        height: image height H.
        width: image width W.
        fg: (H, W) bool, non-empty region the masks are confined to.
        rng: the only source of randomness.
    """

    def __init__(self, height: int, width: int, fg: np.ndarray, rng: np.random.Generator) -> None:
        self.height, self.width, self.fg, self.rng = height, width, fg, rng
        self.scale = math.sqrt(height * width) / REF_SIDE
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


def paint_regions(cv: Canvas, spec: MaskSpec, region: RegionPainter) -> np.ndarray:
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
            if inside >= MIN_INSIDE:
                break
        patch, y0, x0 = best
        out[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] |= patch
    return out


def _placer(cv: Canvas, spec: MaskSpec, ey: float, ex: float, painter: Painter) -> Placer:
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


def rectangle(cv: Canvas, spec: MaskSpec, v: Variant, area: float) -> Placer:
    """Rotated rectangle (or line) of ``area`` px; the short side is at least 1 px."""
    short = max(1.0, math.sqrt(area * cv.rng.uniform(*v.aspect)))
    hl, hs = area / short / 2, short / 2
    phi = cv.rng.uniform(0, math.pi)
    c, s = math.cos(phi), math.sin(phi)
    ex, ey = abs(c) * hl + abs(s) * hs, abs(s) * hl + abs(c) * hs
    return _placer(
        cv, spec, ey, ex, lambda dy, dx: (np.abs(dx * c + dy * s) <= hl) & (np.abs(dy * c - dx * s) <= hs)
    )


def polygon(cv: Canvas, spec: MaskSpec, v: Variant, area: float) -> Placer:
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


def ellipse(cv: Canvas, spec: MaskSpec, v: Variant, area: float) -> Placer:
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


def stroke(cv: Canvas, spec: MaskSpec, v: None, area: float) -> Placer:
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


def perlin_blobs(cv: Canvas, spec: MaskSpec) -> np.ndarray:
    """Perlin noise (:func:`uniadc.noise.perlin`, sqrt(2)-scaled as in the official code) > 0.5 on a
    lattice of 2^k cells per side (k drawn from ``spec.cells`` per axis), rotated by U(-90, 90) degrees about
    the centre. The noise is evaluated at rotated coordinates (no empty corners), every ``step`` px with at
    least 8 samples per cell, linearly interpolated in between; (H, W) bool."""
    cells_y, cells_x = (int(c) for c in 2 ** cv.rng.integers(spec.cells[0], spec.cells[1] + 1, size=2))
    angle = float(cv.rng.uniform(-math.pi / 2, math.pi / 2))
    step = coarse_step(cv.height, cv.width, cells_y, cells_x)
    return perlin(cv.height, cv.width, cells_y, cells_x, cv.rng, angle=angle, step=step) > 0.5
