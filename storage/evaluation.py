"""Reading test images and their ground truth at their own size (the geometry is the caller's)."""

from __future__ import annotations

import numpy as np
import polars as pl

from storage.images import read_image, read_mask


def read_test_chunk(rows: pl.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split rows -> [(image (H, W, 3) uint8, ground-truth class map (H, W) uint8)] at each image's size.

    Masks are checked against their image's size and multiplied by the row's label index (0 normal, k
    category k; label -1, several categories such as MVTec-FS "combined", counts for detection only: 1).
    """
    out = []
    for row in rows.iter_rows(named=True):
        image = read_image(row["path"])
        gt = np.zeros(image.shape[:2], np.uint8)
        if row["mask_path"]:
            mask = read_mask(row["mask_path"], expected_hw=image.shape[:2])
            gt = mask.astype(np.uint8) * np.uint8(max(int(row["label_index"]), 1))
        out.append((image, gt))
    return out
