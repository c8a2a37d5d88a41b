"""Reading test images and their ground truth at run resolution."""

from __future__ import annotations

import numpy as np
import polars as pl

from storage.images import read_image, read_mask, resize_image, resize_mask


def load_test_chunk(rows: pl.DataFrame, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Split rows -> images (n, S, S, 3) uint8 and ground-truth class maps (n, S, S) uint8.

    Masks are checked against their image's size, resized by nearest neighbour and multiplied by the row's
    label index (0 normal, k category k).
    """
    images = np.zeros((rows.height, size, size, 3), np.uint8)
    gt = np.zeros((rows.height, size, size), np.uint8)
    for i, row in enumerate(rows.iter_rows(named=True)):
        image = read_image(row["path"])
        images[i] = resize_image(image, size)
        if row["mask_path"]:
            mask = resize_mask(read_mask(row["mask_path"], expected_hw=image.shape[:2]), size)
            # label -1 (several categories, e.g. MVTec-FS "combined") counts for detection only: any class will do
            gt[i] = mask.astype(np.uint8) * max(int(row["label_index"]), 1)
    return images, gt
