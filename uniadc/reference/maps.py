"""Per-level nearest-neighbour distances -> one smoothed distance map at the image size."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

SIGMA_AT_256 = 4.0  # Gaussian sigma in pixels at a 256 px image (PatchCore's smoothing), scaled with size


def smooth_sigma(size: int) -> float:
    return SIGMA_AT_256 * size / 256.0


def _gaussian(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    x = F.pad(x[:, None], (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))[:, 0]


def distance_map(distances: list[Tensor], size: tuple[int, int]) -> Tensor:
    """Mean over levels of the bilinearly upsampled distances, Gaussian-smoothed: (B, H, W) float32."""
    up = [
        F.interpolate(d[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
        for d in distances
    ]
    return _gaussian(torch.stack(up).mean(0), smooth_sigma(max(size)))
