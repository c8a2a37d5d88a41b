"""Seeded 2-D gradient (Perlin) noise: the one implementation behind the Perlin masks and the renderer.

The field is defined in centred pixel coordinates ``(yc, xc) = (y - (H-1)/2, x - (W-1)/2)``, optionally
rotated by ``angle``, and scaled to lattice units (``cells_y`` cells over the image height, ``cells_x`` over
its width)::

    v = (yc cos(angle) + xc sin(angle)) * cells_y / H - v0
    u = (xc cos(angle) - yc sin(angle)) * cells_x / W - u0

At each lattice node sits a random unit gradient; the noise at (v, u) is the quintic-faded bilinear blend of
the four surrounding nodes' gradients dotted with the offsets to them, times sqrt(2) (as in the official
code), so it lies in [-1, 1]. The origin (v0, u0) puts the whole image grown by 1/8 on its far sides inside
the lattice, shifted by a random phase in [0, 1) cells: no pixel is pinned to a node and the number of nodes
(hence the draws from the generator) does not depend on the resolution, so equal seeds give the same field at
256x256 and 512x512.

Draw order (part of the determinism contract): the phase ``(rng.uniform(0, 1), rng.uniform(0, 1))``, then
one gradient angle ``rng.uniform(0, 2 pi)`` per node, row-major.
"""

from __future__ import annotations

import math

import numpy as np

_GROW = 0.125  # the lattice covers the image grown by this fraction of its side on the far sides
_SQRT2 = np.float32(math.sqrt(2.0))


def coarse_step(
    height: int, width: int, cells_y: float, cells_x: float, samples_per_cell: int = 8, max_step: int = 16
) -> int:
    """Sampling step for :func:`perlin`: the largest power of two up to ``max_step`` that still leaves at
    least ``samples_per_cell`` samples per lattice cell along both axes (at least 1)."""
    _check_field(height, width, cells_y, cells_x)
    _check_positive_int("samples_per_cell", samples_per_cell)
    _check_positive_int("max_step", max_step)
    room = min(height / cells_y, width / cells_x, max_step * samples_per_cell) / samples_per_cell
    step = 1
    while 2 * step <= room:
        step *= 2
    return step


def perlin(
    height: int,
    width: int,
    cells_y: float,
    cells_x: float,
    rng: np.random.Generator,
    *,
    angle: float = 0.0,
    step: int = 1,
) -> np.ndarray:
    """2-D Perlin noise over an (H, W) image (see the module docstring for the exact field).

    Args:
        height: H, at least 1.
        width: W, at least 1.
        cells_y: lattice cells over the image height (> 0; fractional values are allowed).
        cells_x: lattice cells over the image width (> 0).
        rng: the only source of randomness (phase and gradients).
        angle: rotation of the lattice about the image centre, radians.
        step: evaluate the field every ``step`` px and interpolate linearly in between (1 = exact). The
            draws do not depend on ``step`` while ``step <= min(H, W) / 8``, so the same seed gives the
            same field, approximated; :func:`coarse_step` picks one with 8 samples per cell.

    Returns:
        (H, W) float32 in [-1, 1], zero mean in expectation.
    """
    _check_field(height, width, cells_y, cells_x)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if not math.isfinite(angle):
        raise ValueError(f"angle must be finite, got {angle!r}")
    _check_positive_int("step", step)
    c, s = math.cos(angle), math.sin(angle)
    sy, sx = cells_y / height, cells_x / width
    # sample rows/columns in centred pixels; a coarse grid runs one sample past the image (interpolation)
    ny, nx = (height, width) if step == 1 else (-(-height // step) + 1, -(-width // step) + 1)
    ys = (np.arange(ny, dtype=np.float32) * step - (height - 1) / 2)[:, None]
    xs = (np.arange(nx, dtype=np.float32) * step - (width - 1) / 2)[None, :]
    # lattice frame: the corners of the grown image (or of the sampled grid, if larger), rotated
    far_y = max((0.5 + _GROW) * height, float(ys[-1, 0]))
    far_x = max((0.5 + _GROW) * width, float(xs[0, -1]))
    ky = np.array([-height / 2, -height / 2, far_y, far_y])
    kx = np.array([-width / 2, far_x, -width / 2, far_x])
    kv, ku = (ky * c + kx * s) * sy, (kx * c - ky * s) * sx
    v0, u0 = float(kv.min() - rng.uniform(0.0, 1.0)), float(ku.min() - rng.uniform(0.0, 1.0))
    rows, cols = int(kv.max() - v0) + 2, int(ku.max() - u0) + 2
    angles = rng.uniform(0.0, 2.0 * math.pi, (rows, cols))
    grad_y, grad_x = np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)
    if s == 0.0:  # axis aligned: v is a column and u a row, broadcast only where needed
        v, u = ys * (c * sy) - v0, xs * (c * sx) - u0
    else:
        v, u = (ys * c + xs * s) * sy - v0, (xs * c - ys * s) * sx - u0
    noise = _SQRT2 * _gradient_noise(v, u, grad_y, grad_x)
    return _upsample(noise, step, height, width)


def fractal(
    height: int, width: int, cells_y: float, cells_x: float, octaves: int, rng: np.random.Generator
) -> np.ndarray:
    """Sum of ``octaves`` :func:`perlin` layers, each twice the frequency and half the amplitude, divided by
    the sum of the amplitudes; (H, W) float32 in [-1, 1]."""
    _check_positive_int("octaves", octaves)
    _check_field(height, width, cells_y, cells_x)
    total = np.zeros((height, width), np.float32)
    amp, norm = 1.0, 0.0
    for k in range(octaves):
        total += amp * perlin(height, width, cells_y * 2**k, cells_x * 2**k, rng)
        norm += amp
        amp *= 0.5
    return total / np.float32(norm)


def _gradient_noise(v: np.ndarray, u: np.ndarray, grad_y: np.ndarray, grad_x: np.ndarray) -> np.ndarray:
    """Unscaled Perlin noise at lattice coordinates v (N, 1 or M) and u (N or 1, M), float32 and inside the
    lattice of (rows, cols) unit gradients (grad_y, grad_x); (N, M) float32 in [-sqrt(1/2), sqrt(1/2)]."""
    rows, cols = grad_y.shape
    fl_v, fl_u = np.floor(v), np.floor(u)
    fv, fu = v - fl_v, u - fl_u
    # clipping only guards against float rounding at the lattice border
    i = np.minimum(np.maximum(fl_v.astype(np.intp), 0), rows - 2)
    j = np.minimum(np.maximum(fl_u.astype(np.intp), 0), cols - 2)
    tv, tu = _fade(fv), _fade(fu)
    if v.shape[1] == 1 and u.shape[0] == 1:  # axis aligned: blend the lattice rows (N, cols), then columns
        i, j = i[:, 0], j[0]
        along = grad_y[i] * ((1 - tv) * fv) + grad_y[i + 1] * (tv * (fv - 1))  # gradient . offset, v part
        plain = grad_x[i] * (1 - tv) + grad_x[i + 1] * tv  # u component of the v-blended gradients
        return (
            along[:, j] * (1 - tu)
            + along[:, j + 1] * tu
            + plain[:, j] * ((1 - tu) * fu)
            + plain[:, j + 1] * (tu * (fu - 1))
        )
    node = i * cols + j
    gy, gx = grad_y.ravel(), grad_x.ravel()

    def corner(di: int, dj: int) -> np.ndarray:
        k = node + (di * cols + dj)
        return gy.take(k) * (fv - di) + gx.take(k) * (fu - dj)

    n00, n10 = corner(0, 0), corner(1, 0)
    top = n00 + tu * (corner(0, 1) - n00)
    return top + tv * (n10 + tu * (corner(1, 1) - n10) - top)


def _upsample(coarse: np.ndarray, step: int, height: int, width: int) -> np.ndarray:
    """Separable linear interpolation of samples taken every ``step`` px onto an (H, W) grid."""
    if step == 1:
        return coarse
    t = np.arange(step, dtype=np.float32) / np.float32(step)
    a, b = coarse[:, :-1, None], coarse[:, 1:, None]
    rows = (a + (b - a) * t).reshape(coarse.shape[0], -1)[:, :width]
    a, b = rows[:-1, None, :], rows[1:, None, :]
    return (a + (b - a) * t[:, None]).reshape(-1, width)[:height]


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_field(height: int, width: int, cells_y: float, cells_x: float) -> None:
    _check_positive_int("height", height)
    _check_positive_int("width", width)
    for name, value in (("cells_y", cells_y), ("cells_x", cells_x)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float | np.integer | np.floating)
            or not (math.isfinite(value) and value > 0)
        ):
            raise ValueError(f"cells must be positive and finite, got {name}={value!r}")
