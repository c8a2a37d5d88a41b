"""Training losses of the discriminator (paper eq. 6; official: focal alpha 1 gamma 2, dice smooth 1, CE).

``L = focal(M, A) + dice(M, A) + lambda * CE(class logits, C)``, where M is the anomaly map, A the binary
anomaly mask and C the category mask, all at the mask (image) resolution; the cross-entropy ignores normal
pixels. :func:`grid_loss` computes exactly this from the feature-grid logits without materialising the K
upsampled class maps: the anomaly logit (one channel) is upsampled, and the class logits are interpolated
only at the anomalous pixels (same bilinear weights as ``F.interpolate(..., align_corners=False)``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from uniadc.discriminator.model import anomaly_logit_from_class_logits


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """Binary focal loss (alpha = 1), mean over pixels.

    Args:
        logits: (B, H, W) float anomaly logits.
        target: (B, H, W) float in {0, 1}.
    """
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    return ((1.0 - p_t) ** gamma * ce).mean()


def dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft dice loss over the whole batch: ``1 - (2 sum(p t) + s) / (sum p + sum t + s)``."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    return 1.0 - (2.0 * inter + smooth) / (p.sum() + target.sum() + smooth)


def sample_bilinear(grid: Tensor, size: tuple[int, int], points: Tensor) -> Tensor:
    """Values of ``F.interpolate(grid, size, mode="bilinear", align_corners=False)`` at given pixels only.

    Args:
        grid: (B, K, h, w) float.
        size: the upsampled (H, W).
        points: (P, 3) int64 rows (batch, y, x) in the upsampled image.

    Returns:
        (P, K) float, differentiable w.r.t. ``grid``.
    """
    h, w = grid.shape[-2:]
    b = points[:, 0]

    def axis(dst: Tensor, n_src: int, n_dst: int) -> tuple[Tensor, Tensor, Tensor]:
        src = ((dst.to(grid.dtype) + 0.5) * (n_src / n_dst) - 0.5).clamp_min(0.0)
        i0 = src.floor().long().clamp_max(n_src - 1)
        i1 = (i0 + 1).clamp_max(n_src - 1)
        return i0, i1, (src - i0.to(grid.dtype))[:, None]

    y0, y1, wy = axis(points[:, 1], h, size[0])
    x0, x1, wx = axis(points[:, 2], w, size[1])
    g = grid.permute(0, 2, 3, 1)  # (B, h, w, K)
    top = g[b, y0, x0] * (1 - wx) + g[b, y0, x1] * wx
    bottom = g[b, y1, x0] * (1 - wx) + g[b, y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def grid_loss(grid_logits: Tensor, class_mask: Tensor, cls_weight: float) -> Tensor:
    """Loss of eq. 6 from feature-grid class logits and full-resolution class masks.

    Args:
        grid_logits: (B, K, h, w) float class logits on the feature grid.
        class_mask: (B, H, W) int64, 0 normal, k = category k (1-based).
        cls_weight: lambda of the classification term.

    Returns:
        Scalar loss.
    """
    size = tuple(class_mask.shape[-2:])
    anomaly = F.interpolate(
        anomaly_logit_from_class_logits(grid_logits)[:, None], size=size, mode="bilinear", align_corners=False
    )[:, 0]
    target = (class_mask > 0).to(anomaly.dtype)
    loss = focal_loss(anomaly, target) + dice_loss(anomaly, target)
    points = torch.nonzero(class_mask > 0)
    if cls_weight > 0 and len(points):
        picked = sample_bilinear(grid_logits, size, points)
        loss = loss + cls_weight * F.cross_entropy(
            picked, class_mask[points[:, 0], points[:, 1], points[:, 2]] - 1
        )
    return loss
