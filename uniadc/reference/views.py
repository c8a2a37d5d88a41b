"""The eight dihedral views (4 rotations x optional flip) of square images; view 0 is the identity."""

from __future__ import annotations

import numpy as np

DIHEDRAL_VIEWS = 8


def dihedral_views(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All eight dihedral views of each image.

    Args:
        images: (N, S, S, 3) uint8, square.

    Returns:
        (views (8N, S, S, 3) uint8, owner (8N,) int64 index of the source image, view (8N,) int64 in 0..7),
        ordered image-major: rows ``8 i .. 8 i + 7`` are the views of image ``i``, row ``8 i`` the image itself.
    """
    if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, S, S, 3) square RGB, got shape {images.shape}")
    out = [dihedral_view(img, v) for img in images for v in range(DIHEDRAL_VIEWS)]
    n = images.shape[0]
    owner = np.repeat(np.arange(n, dtype=np.int64), DIHEDRAL_VIEWS)
    view = np.tile(np.arange(DIHEDRAL_VIEWS, dtype=np.int64), n)
    views = np.ascontiguousarray(np.stack(out)) if out else images[:0]
    return views, owner, view


def dihedral_view(array: np.ndarray, view: int) -> np.ndarray:
    """One view of an (S, S, ...) array: rotated ``view % 4`` quarter turns, then flipped left-right if
    ``view >= 4`` (the convention of ``uniadc.augment.augment_with_views``)."""
    r = np.rot90(array, view % 4)
    return r[:, ::-1] if view >= 4 else r


def dihedral_masks(masks: np.ndarray) -> np.ndarray:
    """(N, S, S) masks -> (8N, S, S), in the order of :func:`dihedral_views`."""
    out = [dihedral_view(m, v) for m in masks for v in range(DIHEDRAL_VIEWS)]
    return np.ascontiguousarray(np.stack(out)) if out else np.asarray(masks)[:0]


def view_coords(h: int, w: int, view: int) -> np.ndarray:
    """(h, w, 2) float32: for each cell of an h x w grid over dihedral view ``view``, the (y, x) position in
    the original image it came from, in [0, 1] (cell centres)."""
    yy, xx = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    grid = np.stack([yy, xx], axis=-1).astype(np.float32)
    if h != w and view % 2:
        raise ValueError("odd rotations need a square grid")
    grid = np.rot90(grid, view % 4, axes=(0, 1))
    return np.ascontiguousarray(grid[:, ::-1] if view >= 4 else grid)
