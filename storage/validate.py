"""Read every file of a dataset once: decode images, check masks against their images, gather statistics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from storage.datasets import ImageRecord
from storage.images import read_image, read_mask


@dataclass
class DatasetStats:
    """Counts per label and image-size statistics of a scanned dataset."""

    counts: Counter = field(default_factory=Counter)
    heights: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    defect_fraction: dict[str, list[float]] = field(default_factory=dict)

    def size_summary(self) -> str:
        if not self.heights:
            return "no images"
        h, w = np.asarray(self.heights), np.asarray(self.widths)
        return (
            f"height {h.min()}-{h.max()} (median {int(np.median(h))}), "
            f"width {w.min()}-{w.max()} (median {int(np.median(w))})"
        )


def check_records(records: Sequence[ImageRecord], advance: Callable[[], None] | None = None) -> DatasetStats:
    """Decode every image and mask; raises ``DataError`` naming the first bad file."""
    stats = DatasetStats()
    for rec in records:
        image = read_image(rec.path)
        stats.counts[rec.label_name] += 1
        stats.heights.append(image.shape[0])
        stats.widths.append(image.shape[1])
        if rec.mask_path is not None:
            mask = read_mask(rec.mask_path, expected_hw=image.shape[:2])
            stats.defect_fraction.setdefault(rec.label_name, []).append(float(mask.mean()))
        if advance is not None:
            advance()
    return stats
