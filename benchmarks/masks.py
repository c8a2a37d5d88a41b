"""Mask generation speed: masks/s per resolution over every local (shape, size), with and without foreground.

Usage: ``python benchmarks/masks.py [--n 20] [--sizes 256 512] [--seed 0]``. Prints one line per shape with
masks/s and the median area (fraction of the image), then the overall masks/s per resolution.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from schemas.priors import LOCAL_SHAPES, MASK_SIZES
from uniadc.masks import generate_mask


def _disc_foreground(size: int) -> np.ndarray:
    """A centred disc covering about 30 % of the image (an object on a background)."""
    yy, xx = np.ogrid[:size, :size]
    r = size * np.sqrt(0.3 / np.pi)
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= r * r


def bench(
    size: int, n: int, seed: int, foreground: np.ndarray | None
) -> tuple[float, dict[str, tuple[float, float]]]:
    """Generate ``n`` masks of every local (shape, size); returns overall masks/s and, per shape, (masks/s,
    median area)."""
    rng = np.random.default_rng(seed)
    per_shape: dict[str, tuple[float, float]] = {}
    total_time, total = 0.0, 0
    for shape in LOCAL_SHAPES:
        areas = []
        start = time.perf_counter()
        for mask_size in MASK_SIZES:
            for _ in range(n):
                areas.append(generate_mask(shape, mask_size, size, size, rng, foreground).mean())
        elapsed = time.perf_counter() - start
        per_shape[shape] = (len(areas) / elapsed, float(np.median(areas)))
        total_time += elapsed
        total += len(areas)
    return total / total_time, per_shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="masks per (shape, size) and resolution")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square resolutions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    summary = []
    for size in args.sizes:
        for label, fg in (("whole image", None), ("30% disc foreground", _disc_foreground(size))):
            rate, per_shape = bench(size, args.n, args.seed, fg)
            print(f"--- {size}x{size}, {label}")
            for shape, (shape_rate, median) in per_shape.items():
                print(f"  {shape:<15} {shape_rate:8.1f} masks/s   median area {median:.4f}")
            summary.append(f"masks/s @{size} ({label}): {rate:.1f}")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
