"""Per-image intensity standardisation before the backbone (``discriminator.intensity``).

Industrial tiles of one product differ in exposure and contrast from image to image (lighting, camera gain,
surface finish). With a handful of support normals, a nearest-neighbour reference then scores a test tile
that is merely brighter or flatter than the support as far from every normal patch. ``standardize`` moves
each image's mean and standard deviation (over all pixels and channels together, so hues keep their
relations) to fixed targets before the ImageNet normalisation; local structure (a hole, a crack, a dark
uneven patch against its surroundings) is kept, the global exposure is not. ``raw`` is the paper's input.
"""

from __future__ import annotations

from torch import Tensor

TARGET_MEAN = 0.5  # in [0, 1] units
TARGET_STD = 40.0 / 255.0  # a mid-contrast tile: ~2.5 standard deviations fit on each side of the mean
MAX_GAIN = 4.0  # contrast is changed by at most 4x either way: a near-flat image's noise is not blown up


def standardize_intensity(x: Tensor) -> Tensor:
    """(N, 3, H, W) float in [0, 1] -> the same, each image at mean TARGET_MEAN and std TARGET_STD (the gain
    bounded to [1 / MAX_GAIN, MAX_GAIN]), clamped to [0, 1]."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.flatten(1).std(dim=1, correction=0).view(-1, 1, 1, 1)
    gain = (TARGET_STD / std.clamp_min(1e-6)).clamp(1.0 / MAX_GAIN, MAX_GAIN)
    return ((x - mean) * gain + TARGET_MEAN).clamp(0.0, 1.0)


def apply_intensity(x: Tensor, mode: str) -> Tensor:
    """``mode`` ``standardize`` or ``raw`` (unchanged) on (N, 3, H, W) floats in [0, 1]."""
    if mode == "raw":
        return x
    if mode == "standardize":
        return standardize_intensity(x)
    raise ValueError(f"intensity must be raw or standardize, got {mode!r}")
