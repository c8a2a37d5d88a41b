"""Image scores that expect a normal tile's edge to be farther from the bank than its interior.

A tile's rim (chamfers, grinding marks running out, the lighting falloff of the part's border) varies more
between parts than its interior, so even a normal tile's nearest-neighbour distance rises towards its picture
edge, and the image maximum of a normal tile sits on the rim (MTD dev protocol: ~94 % of normal test tiles
within 16 px of the edge). The image score therefore weighs each pixel's distance by ``gain[b]`` = the mean
leave-one-out normal distance of the interior over that of its edge-distance band ``b``, measured on the
support views (training data only), before taking the maximum. The pixel map stays the plain distance: edge
defects (chips off the rim) keep their pixel scores, only the image-level decision is made against the
expected normal profile.

Edge distance is the chessboard distance, in pixels, to the nearest pixel outside the picture (letterbox
padding or the canvas border): 1 on the picture's outermost ring.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# lower edges (px at a 256 px canvas) of the edge-distance bands; the last band is the interior
BAND_EDGES_AT_256 = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
NUM_BANDS = len(BAND_EDGES_AT_256)


def edge_distance(valid: np.ndarray) -> np.ndarray:
    """(N, H, W) bool picture pixels -> (N, H, W) int32 chessboard distance to the nearest non-picture pixel
    (the canvas border counts as outside); 0 outside the picture."""
    valid = np.asarray(valid, bool)
    if valid.ndim != 3:
        raise ValueError(f"valid must be (N, H, W), got shape {valid.shape}")
    out = np.zeros(valid.shape, np.int32)
    for i, v in enumerate(valid):
        out[i] = ndimage.distance_transform_cdt(np.pad(v, 1), metric="chessboard")[1:-1, 1:-1]
    return out


def band_index(distance: np.ndarray, size: int) -> np.ndarray:
    """Band of each edge distance at canvas side ``size`` (bands scale with it); -1 outside the picture."""
    # at small sizes the narrow outer bands shrink below a pixel and merge into the first one
    edges = np.maximum(np.array(BAND_EDGES_AT_256, np.float64) * size / 256.0, 1.0)
    band = np.searchsorted(edges, distance, side="right") - 1
    return np.where(distance > 0, band, -1)


def fit_edge_gain(normal_maps: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-band gain from leave-one-out normal distance maps of the support views.

    Args:
        normal_maps: (N, H, W) distance maps (not calibrated) of normal training views.
        valid: (N, H, W) bool, their picture pixels.

    Returns:
        (NUM_BANDS,) float32: interior mean over band mean. Bands no picture pixel falls in take the gain of
        the nearest inner band that has pixels (1 for the interior itself).
    """
    maps = np.asarray(normal_maps, np.float64)
    if maps.ndim != 3 or maps.shape != np.shape(valid) or len(maps) == 0:
        raise ValueError(f"normal_maps and valid must be the same (N >= 1, H, W), got {maps.shape}")
    band = band_index(edge_distance(valid), maps.shape[-1])
    means = np.full(NUM_BANDS, np.nan)
    for b in range(NUM_BANDS):
        sel = band == b
        if sel.any():
            means[b] = maps[sel].mean()
    filled = [b for b in range(NUM_BANDS) if np.isfinite(means[b])]
    if not filled:
        raise ValueError("no picture pixel in the normal maps")
    inner = means[filled[-1]]
    gain = np.ones(NUM_BANDS)
    for b in range(NUM_BANDS):
        ref = next((j for j in range(b, NUM_BANDS) if np.isfinite(means[j])), filled[-1])
        gain[b] = inner / max(means[ref], 1e-6)
    return gain.astype(np.float32)


def weighted_maps(maps: np.ndarray, valid: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """(N, H, W) distance maps times their band's gain; -inf outside the picture."""
    maps = np.asarray(maps, np.float32)
    band = band_index(edge_distance(valid), maps.shape[-1])
    g = np.asarray(gain, np.float32)[np.clip(band, 0, None)]
    return np.where(band >= 0, maps * g, -np.inf).astype(np.float32)


def edge_weighted_max(maps: np.ndarray, valid: np.ndarray, gain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image score = maximum of :func:`weighted_maps` over the picture: ((N,) float32 scores, (N,) int64 flat
    index of the maximum)."""
    w = weighted_maps(maps, valid, gain).reshape(len(maps), -1)
    at = w.argmax(axis=1)
    return w[np.arange(len(w)), at].astype(np.float32), at.astype(np.int64)
