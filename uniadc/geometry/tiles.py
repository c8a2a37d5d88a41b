"""Tiling: an image is cut into overlapping square windows of side ``min(size, H, W)`` at its own resolution,
each resized to the model's ``size``; per-window maps go back to the window's place and overlaps are averaged.

A 1024 x 128 strip at ``size`` 256 gives 128-px windows (upsampled 2x to 256) every 96 px along the strip
(overlap 0.25), the last flush with the far edge, so every pixel is covered and none is squashed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class Window:
    """A ``side`` x ``side`` square of the original image with its top-left corner at (top, left)."""

    top: int
    left: int
    side: int


def _starts(length: int, side: int, stride: int) -> list[int]:
    if length <= side:
        return [0]
    starts = list(range(0, length - side + 1, stride))
    if starts[-1] != length - side:
        starts.append(length - side)
    return starts


def tile_windows(height: int, width: int, size: int, overlap: float = 0.25) -> list[Window]:
    """Windows covering an ``height`` x ``width`` image, row-major.

    Args:
        height, width: original image size in pixels.
        size: the model's input side; windows are at most this large at the original resolution.
        overlap: fraction of a window shared with its neighbour, in [0, 0.9].
    """
    if height < 1 or width < 1 or size < 1:
        raise ValueError(f"height, width and size must be >= 1, got {height}, {width}, {size}")
    if not 0.0 <= overlap <= 0.9:
        raise ValueError(f"overlap must be in [0, 0.9], got {overlap}")
    side = min(size, height, width)
    stride = max(1, round(side * (1.0 - overlap)))
    return [
        Window(top, left, side)
        for top in _starts(height, side, stride)
        for left in _starts(width, side, stride)
    ]


def _resize(x: torch.Tensor, side: int, nearest: bool) -> torch.Tensor:
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    if nearest:
        return F.interpolate(x, size=(side, side), mode="nearest-exact")
    down = x.shape[-1] > side
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=down)


def cut_tiles(array: np.ndarray, windows: Sequence[Window], size: int) -> np.ndarray:
    """The windows of an (H, W, 3) uint8 image (bilinear) or an (H, W) bool / uint8 mask (nearest), each
    resized to ``size`` -> (n, size, size[, 3]) of the input dtype."""
    image = array.ndim == 3
    x = torch.from_numpy(np.ascontiguousarray(array))
    x = (x.permute(2, 0, 1) if image else x[None]).float()
    out = []
    for win in windows:
        crop = x[:, win.top : win.top + win.side, win.left : win.left + win.side][None]
        out.append(_resize(crop, size, nearest=not image)[0])
    tiles = torch.stack(out)
    if image:
        return tiles.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    tiles = tiles[:, 0]
    return (tiles > 0.5).numpy() if array.dtype == bool else tiles.round_().to(torch.uint8).numpy()


def stitch_mean(maps: np.ndarray, windows: Sequence[Window], height: int, width: int) -> np.ndarray:
    """(n, S, S) float per-window maps -> (height, width) float32, the mean over the windows covering a pixel."""
    if len(maps) != len(windows):
        raise ValueError(f"{len(maps)} maps for {len(windows)} windows")
    total = torch.zeros(height, width)
    count = torch.zeros(height, width)
    for m, win in zip(maps, windows, strict=True):
        back = _resize(torch.from_numpy(np.asarray(m, np.float32))[None, None], win.side, nearest=False)[0, 0]
        total[win.top : win.top + win.side, win.left : win.left + win.side] += back
        count[win.top : win.top + win.side, win.left : win.left + win.side] += 1
    if (count == 0).any():
        raise ValueError("the windows do not cover the image")
    return (total / count).numpy()


def stitch_votes(
    labels: np.ndarray, windows: Sequence[Window], height: int, width: int, num_labels: int
) -> np.ndarray:
    """(n, S, S) integer per-window labels -> (height, width) uint8, the most frequent label over the windows
    covering a pixel (ties to the lowest label)."""
    if len(labels) != len(windows):
        raise ValueError(f"{len(labels)} label maps for {len(windows)} windows")
    votes = torch.zeros(num_labels, height, width)
    for lab, win in zip(labels, windows, strict=True):
        back = _resize(torch.from_numpy(np.asarray(lab, np.float32))[None, None], win.side, nearest=True)[
            0, 0
        ]
        onehot = F.one_hot(back.long().clamp_(0, num_labels - 1), num_labels).permute(2, 0, 1).float()
        votes[:, win.top : win.top + win.side, win.left : win.left + win.side] += onehot
    return votes.argmax(dim=0).to(torch.uint8).numpy()
