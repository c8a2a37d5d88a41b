"""Image geometry (``dataset.resize``): squash, letterbox (``pad``) or overlapping tiles stitched back."""

from uniadc.geometry.letterbox import (
    PAD_ASPECT,
    canvas,
    canvas_mode,
    fit_ground_truth,
    fit_image,
    fit_map,
    fit_mask,
    letterbox_box,
    letterbox_valid,
    resolved_resize,
)
from uniadc.geometry.tiles import Window, cut_tiles, stitch_mean, stitch_votes, tile_windows

__all__ = [
    "PAD_ASPECT",
    "Window",
    "canvas",
    "canvas_mode",
    "cut_tiles",
    "fit_ground_truth",
    "fit_image",
    "fit_map",
    "fit_mask",
    "letterbox_box",
    "letterbox_valid",
    "resolved_resize",
    "stitch_mean",
    "stitch_votes",
    "tile_windows",
]
