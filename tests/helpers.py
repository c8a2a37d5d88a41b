"""Tiny datasets on disk in each layout, built from random pixels (no project code involved)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _img(rng: np.random.Generator, size: int = 32) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _mask(rng: np.random.Generator, size: int = 32) -> Image.Image:
    m = np.zeros((size, size), np.uint8)
    y, x = rng.integers(2, size - 10, 2)
    m[y : y + 6, x : x + 6] = 255
    return Image.fromarray(m)


def make_mvtec(
    root: Path,
    image_class: str = "widget",
    defects=("dent", "scratch"),
    n_train: int = 5,
    n_good: int = 3,
    n_defect: int = 3,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """MVTec AD layout with random images; returns the dataset root."""
    rng = np.random.default_rng(seed)
    base = root / image_class
    for i in range(n_train):
        p = base / "train" / "good" / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        _img(rng, size).save(p)
    for i in range(n_good):
        p = base / "test" / "good" / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        _img(rng, size).save(p)
    for d in defects:
        for i in range(n_defect):
            p = base / "test" / d / f"{i:03d}.png"
            m = base / "ground_truth" / d / f"{i:03d}_mask.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            m.parent.mkdir(parents=True, exist_ok=True)
            _img(rng, size).save(p)
            _mask(rng, size).save(m)
    return root


def make_mtd(root: Path, counts: dict[str, int] | None = None, size: int = 32, seed: int = 0) -> Path:
    """Raw MTD layout (``MT_<Category>/Imgs/<stem>.jpg`` + ``.png`` mask)."""
    counts = counts or {"Free": 6, "Blowhole": 3, "Crack": 3}
    rng = np.random.default_rng(seed)
    for cat, n in counts.items():
        folder = root / f"MT_{cat}" / "Imgs"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _img(rng, size).convert("L").save(folder / f"exp_{i}.jpg")
            mask = _mask(rng, size) if cat != "Free" else Image.new("L", (size, size), 0)
            mask.save(folder / f"exp_{i}.png")
    return root


def write_priors(path: Path, image_class: str, names: list[str], dataset: str = "test") -> Path:
    lines = [f"dataset: {dataset}", f"image_class: {image_class}", "categories:"]
    for n in names:
        lines += [f"  - name: {n}", f"    descriptions: [a {n} defect]"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
