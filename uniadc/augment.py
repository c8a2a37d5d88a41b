"""Training-set augmentation for the discriminator: more views of the few normal images it sees.

With two normal support images the "normal" class is otherwise the exact pixels of two images, and every
illumination change in a test image looks like a large, soft defect. Each augmented copy applies one random
flip / 90° rotation (to image and mask alike) and a photometric change to the whole image: contrast, gamma,
brightness and a smooth linear illumination ramp. A defect keeps its label; its pixels change with the rest.
"""

from __future__ import annotations

import numpy as np


def _geometric(image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator):
    k = int(rng.integers(4)) if image.shape[0] == image.shape[1] else 2 * int(rng.integers(2))
    flip = bool(rng.integers(2))
    image = np.rot90(image, k)
    mask = None if mask is None else np.rot90(mask, k)
    if flip:
        image = image[:, ::-1]
        mask = None if mask is None else mask[:, ::-1]
    view = k + 4 * int(flip)  # the index of this transform in uniadc.reference.dihedral_views
    return np.ascontiguousarray(image), None if mask is None else np.ascontiguousarray(mask), view


def photometric(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Contrast, gamma, brightness and an illumination ramp; (H, W, 3) uint8 -> same."""
    h, w = image.shape[:2]
    x = image.astype(np.float32) / 255.0
    mean = float(x.mean())
    x = (x - mean) * float(np.exp(rng.uniform(-0.25, 0.25) * strength)) + mean
    x = np.clip(x, 0.0, 1.0) ** float(np.exp(rng.uniform(-0.3, 0.3) * strength))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = np.cos(angle) * (xx / max(w - 1, 1) - 0.5) + np.sin(angle) * (yy / max(h - 1, 1) - 0.5)
    x = x + (rng.uniform(-0.12, 0.12) * strength + rng.uniform(0.0, 0.25) * strength * ramp)[..., None]
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def augment(
    images: np.ndarray, masks: np.ndarray | None, copies: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """See :func:`augment_with_views`; returns (images, masks) only."""
    out_images, out_masks, _ = augment_with_views(images, masks, copies, rng)
    return out_images, out_masks


def augment_with_views(
    images: np.ndarray, masks: np.ndarray | None, copies: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The originals followed by ``copies`` augmented versions of each.

    Args:
        images: (N, H, W, 3) uint8.
        masks: optional (N, H, W) label maps, transformed with their image.
        copies: augmented copies per image (0 returns the inputs).
        rng: the only source of randomness.

    Returns:
        ((N * (1 + copies), H, W, 3) uint8, matching masks or None, (N * (1 + copies),) int64 dihedral view
        index of each output: 0 for the originals, ``k + 4 * flip`` for a copy rotated k times then flipped).
    """
    if copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies}")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    if masks is not None and masks.shape != images.shape[:3]:
        raise ValueError(f"masks must have shape {images.shape[:3]}, got {masks.shape}")
    out_images, out_masks = [images], [masks] if masks is not None else None
    views = [np.zeros(len(images), np.int64)]
    for _ in range(copies):
        imgs, msks, vs = [], [], []
        for i in range(len(images)):
            img, msk, v = _geometric(images[i], None if masks is None else masks[i], rng)
            imgs.append(photometric(img, rng))
            msks.append(msk)
            vs.append(v)
        views.append(np.asarray(vs, np.int64))
        out_images.append(np.stack(imgs) if imgs else images[:0])
        if out_masks is not None:
            out_masks.append(np.stack(msks) if msks else masks[:0])
    return (
        np.concatenate(out_images),
        None if out_masks is None else np.concatenate(out_masks),
        np.concatenate(views),
    )
