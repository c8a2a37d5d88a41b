"""An offline demo dataset in the MVTec AD layout, built from scikit-image's bundled CC0 textures.

Normal images are random crops of ``skimage.data.brick()``, ``grass()`` and ``gravel()`` (512x512 gray),
flipped, brightness-jittered and tinted to RGB. Three defect categories are drawn by this module's own
ground-truth renderer, which is deliberately independent of ``uniadc.masks`` and ``uniadc.synthesis``: the
demo must never grade the synthesiser on its own output.

- ``scratch``: one thin curved line (quadratic Bezier), darker or brighter than the surface, sharp edges.
- ``stain``: one soft, irregular, brownish-dark blob that keeps the texture underneath (multiplicative).
- ``hole``: one dark ellipse with a lit/shadowed rim, sharp edges.

Layout written under ``root``::

    <class>/train/good/000.png
    <class>/test/good/000.png
    <class>/test/<defect>/000.png
    <class>/ground_truth/<defect>/000_mask.png   (uint8 0/255)
    <class>/priors.yaml                          (validated by schemas.priors.load_priors)

The build goes into a temporary sibling of ``root`` and is renamed to ``root`` only when complete.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage.transform import resize

from schemas.priors import AnomalyPrior, Appearance, PriorsFile
from storage.files import atomic_dir, remove_stale_partials

DEMO_CLASSES: tuple[str, ...] = ("brick", "grass", "gravel")
DEMO_DEFECTS: tuple[str, ...] = ("scratch", "stain", "hole")
# Per-channel tint applied to the gray texture; index in DEMO_CLASSES keys the class's random stream.
_TINTS: dict[str, tuple[float, float, float]] = {
    "brick": (1.0, 0.80, 0.66),
    "grass": (0.76, 1.0, 0.62),
    "gravel": (0.95, 0.93, 0.88),
}
# Fraction of the image each renderer covers (documented bounds; tests check them).
DEFECT_AREA_RANGE: dict[str, tuple[float, float]] = {
    "scratch": (0.001, 0.03),
    "stain": (0.008, 0.08),
    "hole": (0.002, 0.015),
}
_SPLITS = {"train_good": 0, "test_good": 1, "scratch": 2, "stain": 3, "hole": 4}


def demo_priors(image_class: str) -> PriorsFile:
    """The priors a user of the demo would state, consistent with what the renderer draws."""
    _check_classes((image_class,))
    return PriorsFile(
        dataset="demo",
        image_class=image_class,
        categories=(
            AnomalyPrior(
                name="scratch",
                descriptions=("a thin scratch", "thin dark or bright curved scratch line"),
                shapes=("line",),
                sizes=("small", "medium"),
                appearance=Appearance(tone="any", texture="smooth", edge="sharp", contrast=0.45),
            ),
            AnomalyPrior(
                name="stain",
                descriptions=("a brownish stain", "soft dark discoloured blob"),
                shapes=("ellipse", "polygon"),
                sizes=("medium", "large"),
                appearance=Appearance(tone="darker", texture="smooth", edge="soft", contrast=0.35),
            ),
            AnomalyPrior(
                name="hole",
                descriptions=("a small hole", "dark round hole with a rim"),
                shapes=("ellipse",),
                sizes=("small", "medium"),
                appearance=Appearance(tone="darker", texture="smooth", edge="sharp", contrast=0.6),
            ),
        ),
    )


def build_demo_dataset(
    root: Path,
    *,
    image_size: int = 128,
    n_train: int = 8,
    n_test_good: int = 6,
    n_test_per_defect: int = 6,
    seed: int = 0,
    image_classes: Sequence[str] = DEMO_CLASSES,
) -> dict:
    """Build the demo dataset atomically under ``root`` (which must not exist yet).

    Every image has its own random stream keyed by (seed, class, split, index), so the output is
    byte-identical for a seed and a class's images do not depend on which other classes are built.

    Args:
        root: destination folder; built in a temporary sibling (``storage.files.atomic_dir``) and renamed at the end.
        image_size: side of the square RGB images, in [64, 512].
        n_train: normal training images per class (>= 1).
        n_test_good: normal test images per class (>= 1).
        n_test_per_defect: test images per class and defect category (>= 1), each with one defect.
        seed: non-negative integer seed.
        image_classes: subset of ``DEMO_CLASSES``, without repeats.

    Returns:
        Summary: ``{"root", "image_size", "seed", "classes": {cls: {"train/good": n, "test/good": n,
        "test/<defect>": n, ...}}, "n_images", "n_masks"}``.

    Raises:
        ValueError: on an invalid argument (named with its value).
        FileExistsError: if ``root`` already exists.
    """
    root = Path(root)
    classes = tuple(image_classes)
    _check_classes(classes)
    if not isinstance(image_size, int) or not 64 <= image_size <= 512:
        raise ValueError(f"image_size must be an int in [64, 512], got {image_size!r}")
    numbers = {"n_train": n_train, "n_test_good": n_test_good, "n_test_per_defect": n_test_per_defect}
    for name, value in numbers.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if root.exists():
        raise FileExistsError(f"root {str(root)!r} already exists; remove it or choose another folder")

    remove_stale_partials(root)  # what a killed earlier build left
    summary: dict = {"root": str(root), "image_size": image_size, "seed": seed, "classes": {}}
    try:
        with atomic_dir(root) as partial:
            for cls in classes:
                summary["classes"][cls] = _build_class(
                    partial / cls, cls, image_size, n_train, n_test_good, n_test_per_defect, seed
                )
    except FileExistsError:
        raise FileExistsError(f"root {str(root)!r} was built by another process meanwhile") from None
    counts = summary["classes"].values()
    summary["n_images"] = sum(sum(c.values()) for c in counts)
    summary["n_masks"] = sum(c[f"test/{d}"] for c in counts for d in DEMO_DEFECTS)
    return summary


def _check_classes(classes: Sequence[str]) -> None:
    if not classes or len(set(classes)) != len(classes) or any(c not in DEMO_CLASSES for c in classes):
        raise ValueError(f"image_classes must be distinct names from {DEMO_CLASSES}, got {tuple(classes)!r}")


def _build_class(
    out: Path, cls: str, size: int, n_train: int, n_test_good: int, n_defect: int, seed: int
) -> dict[str, int]:
    texture = _load_texture(cls)
    class_id = DEMO_CLASSES.index(cls)

    def rng_for(split: str, index: int) -> np.random.Generator:
        return np.random.default_rng([seed, class_id, _SPLITS[split], index])

    counts: dict[str, int] = {}
    for split, folder, n in (("train_good", "train/good", n_train), ("test_good", "test/good", n_test_good)):
        for i in range(n):
            _write_png(out / folder / f"{i:03d}.png", _normal_image(texture, cls, size, rng_for(split, i)))
        counts[folder] = n
    for defect in DEMO_DEFECTS:
        for i in range(n_defect):
            rng = rng_for(defect, i)
            normal = _normal_image(texture, cls, size, rng)
            image, mask = render_defect(normal, defect, rng)
            _write_png(out / "test" / defect / f"{i:03d}.png", image)
            _write_png(out / "ground_truth" / defect / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
        counts[f"test/{defect}"] = n_defect
    priors = demo_priors(cls).model_dump(mode="json", exclude_defaults=True)
    (out / "priors.yaml").write_text(yaml.safe_dump(priors, sort_keys=False))
    return counts


def _load_texture(cls: str) -> np.ndarray:
    """(512, 512) float64 in [0, 1] from the bundled skimage texture."""
    gray = getattr(skdata, cls)()
    return gray.astype(np.float64) / 255.0


def _normal_image(texture: np.ndarray, cls: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop, flipped, jittered and tinted: (size, size, 3) float64 in [0, 1]."""
    side = max(256, size)
    y0, x0 = rng.integers(0, texture.shape[0] - side + 1, size=2)
    crop = texture[y0 : y0 + side, x0 : x0 + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1, :]
    if side % size == 0:  # exact box downscale (the default sizes): fast and alias-free
        f = side // size
        crop = crop.reshape(size, f, size, f).mean(axis=(1, 3))
    else:
        crop = resize(crop, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    crop = crop * rng.uniform(0.92, 1.08) + rng.uniform(-0.03, 0.03)
    rgb = crop[..., None] * np.asarray(_TINTS[cls])[None, None, :]
    return np.clip(rgb, 0.0, 1.0)


def render_defect(image: np.ndarray, defect: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of a category on a normal image.

    Args:
        image: (H, W, 3) float in [0, 1], square; not modified.
        defect: one of ``DEMO_DEFECTS``.
        rng: the random stream.

    Returns:
        ``(defective, mask)``: (H, W, 3) uint8 image and (H, W) bool mask (True on every changed pixel).
    """
    if defect not in _RENDERERS:
        raise ValueError(f"defect must be one of {DEMO_DEFECTS}, got {defect!r}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"image must be (H, H, 3), got shape {image.shape}")
    for _ in range(20):
        out, mask = _RENDERERS[defect](image, rng)
        low, high = DEFECT_AREA_RANGE[defect]
        if low <= mask.mean() <= high:
            return _to_uint8(out), mask
    raise RuntimeError(f"could not render a {defect!r} within area {DEFECT_AREA_RANGE[defect]} in 20 tries")


def _scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = image.shape[0]
    length = rng.uniform(0.3, 0.6) * n
    angle = rng.uniform(0.0, np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)])
    normal = np.array([-direction[1], direction[0]])
    center = rng.uniform(0.3 * n, 0.7 * n, size=2)
    p0, p2 = center - direction * length / 2, center + direction * length / 2
    p1 = center + normal * rng.uniform(-0.3, 0.3) * length
    t = np.linspace(0.0, 1.0, int(3 * length) + 2)[:, None]
    points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    rows, cols = np.clip(np.round(points).astype(int), 0, n - 1).T
    skeleton = np.zeros((n, n), dtype=bool)
    skeleton[rows, cols] = True
    radius = rng.uniform(0.4, 1.4) * n / 128
    mask = ndimage.distance_transform_edt(~skeleton) <= radius
    strength = rng.uniform(0.5, 0.8)
    if rng.random() < 0.5:
        target = image * 0.25
    else:
        target = image + (1.0 - image) * 0.75
    out = image.copy()
    out[mask] = image[mask] * (1 - strength) + target[mask] * strength
    return out, mask


def _stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = image.shape[0]
    a = rng.uniform(0.07, 0.13) * n
    b = a * rng.uniform(0.6, 1.0)
    distance = _ellipse_distance(n, rng.uniform(0.25 * n, 0.75 * n, size=2), a, b, rng.uniform(0, np.pi))
    cells = int(np.ceil(n / (0.6 * a))) + 1  # noise correlation length ~ 0.6 of the stain's radius
    wobble = ndimage.zoom(rng.standard_normal((cells, cells)), n / cells, order=3, mode="reflect")[:n, :n]
    field = distance + 0.25 * wobble / max(wobble.std(), 1e-6)
    alpha = np.clip((1.0 - field) / 0.5, 0.0, 1.0)
    mask = alpha > 0.2
    alpha = np.where(mask, alpha, 0.0)[..., None]
    colour = np.array([0.62, 0.48, 0.34]) * rng.uniform(0.7, 1.0) + rng.uniform(-0.06, 0.06, size=3)
    strength = rng.uniform(0.5, 0.8)
    out = image * (1.0 - strength * alpha * (1.0 - np.clip(colour, 0.0, 1.0)))
    return out, mask


def _hole(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = image.shape[0]
    a = max(rng.uniform(0.035, 0.06) * n, 3.0)
    b = a * rng.uniform(0.65, 1.0)
    theta = rng.uniform(0, np.pi)
    distance = _ellipse_distance(n, rng.uniform(0.15 * n, 0.85 * n, size=2), a, b, theta)
    mask = distance <= 1.0
    rim_width = max(1.0, 0.012 * n) / b
    rim = mask & (distance > 1.0 - rim_width)
    inner = mask & ~rim
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    light = rng.uniform(0, 2 * np.pi)
    cy, cx = np.argwhere(mask).mean(axis=0)
    lit = 0.5 + 0.5 * np.cos(np.arctan2(yy - cy, xx - cx) - light)
    out = image.copy()
    depth = 0.06 + 0.08 * distance + rng.normal(0.0, 0.015, size=(n, n))
    out[inner] = image[inner] * 0.15 + depth[inner, None] * 0.85
    rim_bright = image + (1.0 - image) * 0.55 * lit[..., None]
    rim_dark = image * (0.35 + 0.3 * lit[..., None])
    rim_value = np.where(lit[..., None] > 0.5, rim_bright, rim_dark)
    out[rim] = rim_value[rim]
    return out, mask


def _ellipse_distance(n: int, center: np.ndarray, a: float, b: float, theta: float) -> np.ndarray:
    """(n, n) normalised elliptical radius: 1.0 on the ellipse with semi-axes a, b rotated by theta."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    dy, dx = yy - center[0], xx - center[1]
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    return np.sqrt((u / a) ** 2 + (v / b) ** 2)


_RENDERERS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "stain": _stain,
    "hole": _hole,
}


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _write_png(path: Path, array: np.ndarray) -> None:
    """Write a (H, W, 3) float [0, 1] or uint8 image, or a (H, W) uint8 mask, as PNG."""
    if array.dtype != np.uint8:
        array = _to_uint8(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=1)  # fast; PNG stays lossless
