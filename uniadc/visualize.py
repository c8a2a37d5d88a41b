"""Pictures for people: contact sheets of samples with their mask outlines, class-map colourings, legends."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

#: Class colours: 0 (normal) is black; categories cycle through a qualitative palette.
PALETTE = np.array(
    [
        (0, 0, 0),
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
        (220, 190, 255),
        (170, 110, 40),
        (128, 0, 0),
        (170, 255, 195),
        (128, 128, 0),
    ],
    dtype=np.uint8,
)


def class_colour(index: int) -> tuple[int, int, int]:
    if index == 0:
        return (0, 0, 0)
    c = PALETTE[1 + (index - 1) % (len(PALETTE) - 1)]
    return int(c[0]), int(c[1]), int(c[2])


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """(H, W) bool -> (H, W) bool boundary pixels of the mask."""
    if not mask.any():
        return mask
    eroded = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    return mask & ~eroded


def draw_outline(image: np.ndarray, mask: np.ndarray, colour=(255, 0, 0), pad: int = 0) -> np.ndarray:
    """Copy of (H, W, 3) uint8 ``image`` with the outline of ``mask`` drawn in ``colour``.

    ``pad`` > 0 outlines the mask dilated by that many pixels, so thin defects stay visible inside the line.
    """
    out = image.copy()
    if pad > 0 and mask.any():
        mask = ndimage.binary_dilation(mask, iterations=pad)
    out[outline(mask, width=max(1, image.shape[0] // 128))] = colour
    return out


def colour_classes(class_map: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class indices -> (H, W, 3) uint8 colours (normal black)."""
    lut = np.array([class_colour(i) for i in range(256)], dtype=np.uint8)
    return lut[class_map]


def overlay(image: np.ndarray, class_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over ``image`` where the class map is not normal."""
    colours = colour_classes(class_map).astype(np.float32)
    out = image.astype(np.float32)
    hit = class_map > 0
    out[hit] = (1 - alpha) * out[hit] + alpha * colours[hit]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    img = Image.fromarray(tile)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    box = draw.textbbox((2, 2), text, font=font)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((2, 2), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def contact_sheet(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray]], tile: int = 128, columns: int = 8, gap: int = 2
) -> np.ndarray:
    """One row per category: its name, then up to ``columns`` samples with the mask outlined in red.

    Args:
        rows: (name, images (N, H, W, 3) uint8, masks (N, H, W) bool) per category.
        tile: side of each thumbnail in pixels.
        columns: samples per row.
        gap: pixels between tiles.

    Returns:
        (H, W, 3) uint8 sheet.
    """
    if not rows:
        raise ValueError("rows is empty: nothing to draw")
    label_w = tile
    height = len(rows) * (tile + gap) + gap
    width = label_w + columns * (tile + gap) + gap
    sheet = np.full((height, width, 3), 255, np.uint8)
    for r, (name, images, masks) in enumerate(rows):
        y = gap + r * (tile + gap)
        sheet[y : y + tile, gap : gap + label_w - gap] = _label(
            np.full((tile, label_w - gap, 3), 40, np.uint8), name
        )
        for c in range(min(columns, len(images))):
            img = np.asarray(Image.fromarray(images[c]).resize((tile, tile), Image.BILINEAR))
            msk = (
                np.asarray(
                    Image.fromarray(masks[c].astype(np.uint8) * 255).resize((tile, tile), Image.NEAREST)
                )
                > 0
            )
            x = label_w + gap + c * (tile + gap)
            sheet[y : y + tile, x : x + tile] = draw_outline(img, msk)
    return sheet


def with_legend(image: np.ndarray, names: Sequence[str], title: str = "") -> np.ndarray:
    """``image`` with a legend strip below it: one colour swatch per class name (index = position)."""
    font = ImageFont.load_default()
    row_h = 14
    lines = ([title] if title else []) + list(names)
    strip = Image.new("RGB", (image.shape[1], row_h * len(lines) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    y = 2
    if title:
        draw.text((4, y), title, fill=(0, 0, 0), font=font)
        y += row_h
    for i, name in enumerate(names):
        draw.rectangle((4, y + 2, 14, y + 12), fill=class_colour(i), outline=(120, 120, 120))
        draw.text((18, y), name, fill=(0, 0, 0), font=font)
        y += row_h
    return np.concatenate([image, np.asarray(strip)], axis=0)


def heatmap(anomaly_map: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] -> (H, W, 3) uint8, dark blue (0) through red (1)."""
    a = np.clip(anomaly_map, 0.0, 1.0)
    r = np.clip(2 * a, 0, 1)
    g = np.clip(1 - np.abs(2 * a - 1), 0, 1) * 0.8
    b = np.clip(1 - 2 * a, 0, 1)
    return np.round(np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)
