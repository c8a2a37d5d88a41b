"""Seeded Perlin noise (uniadc.noise), shared by the Perlin masks and the procedural renderer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from uniadc.noise import coarse_step, fractal, perlin


def _direct(h: int, w: int, cells_y: float, cells_x: float, seed: int, angle: float) -> np.ndarray:
    """The field of the module docstring, pixel by pixel in float64, with the documented draw order."""
    rng = np.random.default_rng(seed)
    c, s = math.cos(angle), math.sin(angle)
    sy, sx = cells_y / h, cells_x / w
    corners = [(y, x) for y in (-h / 2, 5 * h / 8) for x in (-w / 2, 5 * w / 8)]  # image grown by 1/8
    vs = [(y * c + x * s) * sy for y, x in corners]
    us = [(x * c - y * s) * sx for y, x in corners]
    v0, u0 = min(vs) - rng.uniform(0, 1), min(us) - rng.uniform(0, 1)
    rows, cols = int(max(vs) - v0) + 2, int(max(us) - u0) + 2
    theta = rng.uniform(0, 2 * math.pi, (rows, cols))

    def fade(t: float) -> float:
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    out = np.empty((h, w))
    for y in range(h):
        for x in range(w):
            yc, xc = y - (h - 1) / 2, x - (w - 1) / 2
            v, u = (yc * c + xc * s) * sy - v0, (xc * c - yc * s) * sx - u0
            i, j = math.floor(v), math.floor(u)
            wv, wu = (1 - fade(v - i), fade(v - i)), (1 - fade(u - j), fade(u - j))
            total = 0.0
            for di in (0, 1):
                for dj in (0, 1):
                    g = theta[i + di, j + dj]
                    total += wv[di] * wu[dj] * (math.sin(g) * (v - i - di) + math.cos(g) * (u - j - dj))
            out[y, x] = math.sqrt(2) * total
    return out


@pytest.mark.parametrize("angle", [0.0, 0.7, -1.3], ids=["axis-aligned", "rotated", "rotated-negative"])
@pytest.mark.parametrize(("h", "w", "cells_y", "cells_x"), [(19, 23, 3, 7), (16, 40, 1, 2.5)])
def test_perlin_matches_the_direct_formula(h, w, cells_y, cells_x, angle):
    ours = perlin(h, w, cells_y, cells_x, np.random.default_rng(4), angle=angle)
    assert ours.shape == (h, w) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _direct(h, w, cells_y, cells_x, 4, angle), atol=2e-5)


def test_perlin_range_mean_and_random_phase():
    fields = np.stack([perlin(64, 64, 4, 4, np.random.default_rng(s), angle=0.3 * s) for s in range(40)])
    assert np.abs(fields).max() <= 1.0 + 1e-6
    assert abs(float(fields.mean())) < 0.03 and 0.2 < float(fields.std()) < 0.4
    # the lattice phase is random: no pixel sits on a node (where the noise would always be 0)
    corners = [perlin(32, 32, 3, 3, np.random.default_rng(s))[0, 0] for s in range(40)]
    assert np.std(corners) > 0.1
    a = perlin(32, 48, 2, 3, np.random.default_rng(1), angle=0.2)
    assert a.tobytes() == perlin(32, 48, 2, 3, np.random.default_rng(1), angle=0.2).tobytes()
    assert a.tobytes() != perlin(32, 48, 2, 3, np.random.default_rng(2), angle=0.2).tobytes()


@pytest.mark.parametrize("cells", [1, 2, 4, 8, 16, 32])
def test_coarse_evaluation_approximates_the_exact_field_with_the_same_draws(cells):
    step = coarse_step(256, 256, cells, cells)
    assert step == min(16, max(1, 256 // cells // 8))
    r1, r2 = np.random.default_rng(cells), np.random.default_rng(cells)
    exact = perlin(256, 256, cells, cells, r1, angle=0.4)
    coarse = perlin(256, 256, cells, cells, r2, angle=0.4, step=step)
    assert coarse.shape == (256, 256) and coarse.dtype == np.float32
    assert np.abs(coarse - exact).max() < 0.06  # >= 8 samples per cell: linear interpolation error only
    assert r1.random() == r2.random()  # the step does not change what is drawn


@pytest.mark.parametrize("angle", [0.0, 1.1])
def test_equal_seeds_give_the_same_field_at_every_resolution(angle):
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    small = perlin(64, 48, 3, 2, r1, angle=angle)
    large = perlin(128, 96, 3, 2, r2, angle=angle)
    # a small pixel's centre is the centre of a 2x2 block of large pixels
    blocks = large.reshape(64, 2, 48, 2).mean(axis=(1, 3))
    assert np.abs(blocks - small).max() < 0.01
    assert r1.random() == r2.random()


def test_coarse_step_values():
    assert coarse_step(512, 512, 1, 1) == 16  # capped at max_step
    assert coarse_step(512, 512, 32, 32) == 2
    assert coarse_step(256, 256, 32, 32) == 1
    assert coarse_step(256, 512, 4, 1) == 8  # the denser axis decides
    assert coarse_step(512, 512, 1, 1, samples_per_cell=4, max_step=64) == 64


def test_fractal_is_the_amplitude_weighted_sum_of_octaves():
    rng = np.random.default_rng(3)
    first, second = perlin(40, 30, 2, 3, rng), perlin(40, 30, 4, 6, rng)
    ours = fractal(40, 30, 2, 3, 2, np.random.default_rng(3))
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, (first + 0.5 * second) / 1.5, atol=1e-6)
    np.testing.assert_array_equal(fractal(40, 30, 2, 3, 1, np.random.default_rng(3)), first)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda r: perlin(0, 4, 1, 1, r), "height"),
        (lambda r: perlin(4, 2.5, 1, 1, r), "width"),
        (lambda r: perlin(4, 4, 0, 1, r), "cells_y"),
        (lambda r: perlin(4, 4, 1, float("nan"), r), "cells_x"),
        (lambda r: perlin(4, 4, 1, 1, np.random.RandomState(0)), "rng"),
        (lambda r: perlin(4, 4, 1, 1, r, angle=float("inf")), "angle"),
        (lambda r: perlin(4, 4, 1, 1, r, step=0), "step"),
        (lambda r: fractal(4, 4, 1, 1, 0, r), "octaves"),
        (lambda r: fractal(-1, 4, 1, 1, 2, r), "height"),
        (lambda r: coarse_step(64, 64, 1, 1, samples_per_cell=0), "samples_per_cell"),
        (lambda r: coarse_step(64, 64, 1, 1, max_step=True), "max_step"),
    ],
)
def test_invalid_inputs_raise_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(np.random.default_rng(0))
