"""The seeded support/test split, reproducible from (seed, dataset).

Support = ``k_normal`` normal images drawn from the normal training pool plus ``k_anomaly`` images drawn per
defect category (few-shot); ``full_shot`` takes the whole normal training pool. Everything else is test. Draws
use one generator per purpose, seeded from (seed, purpose name), over records sorted by image id, so the split
does not depend on file-system order or on which other categories exist.

A defect image whose mask is empty (MTD ships four such Uneven images) cannot show the category it is labelled
with, so it is never drawn as anomaly support: the draw walks a seeded permutation of the category's images and
takes the first ``k_anomaly`` with a non-empty mask (only the masks it walks past are read). Such images stay in
the test set, where I-AUC/P-AUC/PRO count them by their (empty) mask and Acc by their label.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from schemas.config import RunConfig
from schemas.tables import SPLIT
from storage.datasets import ImageRecord
from storage.errors import DataError
from storage.images import read_mask
from storage.parquet import read_table, write_table_atomic


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def dataset_hash(records: Sequence[ImageRecord]) -> str:
    """sha256 over (image id, label, file size) of every record: changes when files are added or replaced."""
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.image_id):
        size = Path(r.path).stat().st_size
        h.update(f"{r.image_id}|{r.label_name}|{size}\n".encode())
    return h.hexdigest()


def draw_split(records: Sequence[ImageRecord], config: RunConfig) -> dict[str, str]:
    """Map image_id -> "support" | "test"."""
    records = sorted(records, key=lambda r: r.image_id)
    normal_pool = [r for r in records if r.label_index == 0 and r.pool in ("train", "any")]
    need = 1 if config.setting == "full_shot" else config.k_normal
    if len(normal_pool) < need:
        where = {
            "mtd": "MT_Free/Imgs",
            "uniadc_jsonl": f"samples/train_{config.dataset.image_class}.jsonl",
        }.get(config.dataset.kind, f"{config.dataset.image_class}/train/good")
        raise DataError(
            f"k_normal: {need} normal support images asked for, the pool "
            f"({Path(config.dataset.root) / where}) has {len(normal_pool)}"
        )
    if config.setting == "full_shot":
        support = [r.image_id for r in normal_pool]
    else:
        picks = _rng(config.seed, "normal").choice(len(normal_pool), size=config.k_normal, replace=False)
        support = [normal_pool[i].image_id for i in sorted(picks)]
    if config.k_anomaly:
        labels = sorted({r.label_name for r in records if r.label_index > 0})
        for label in labels:
            pool = [r for r in records if r.label_name == label]
            own = [r for r in pool if r.pool == "train"]  # defect support images of the dataset's own (JSONL)
            if own:
                if len(own) < config.k_anomaly:
                    raise DataError(
                        f"k_anomaly: {config.k_anomaly} support images of {label!r} asked for, the training "
                        f"split has {len(own)}"
                    )
                pool = own
            elif len(pool) <= config.k_anomaly:
                raise DataError(
                    f"k_anomaly: {config.k_anomaly} support images of {label!r} asked for, it has "
                    f"{len(pool)} (at least one must stay for testing)"
                )
            order = _rng(config.seed, f"anomaly/{label}").permutation(len(pool))
            picks: list[int] = []
            for i in order:
                if len(picks) == config.k_anomaly:
                    break
                if _has_defect(pool[int(i)]):
                    picks.append(int(i))
            if len(picks) < config.k_anomaly:
                raise DataError(
                    f"k_anomaly: {config.k_anomaly} support images of {label!r} asked for, only {len(picks)} "
                    "have a non-empty mask"
                )
            support += [pool[i].image_id for i in sorted(picks)]
    chosen = set(support)
    return {
        r.image_id: "support" if r.image_id in chosen else "test"
        for r in records
        if r.image_id in chosen or r.pool in ("test", "any")
    }


def _has_defect(record: ImageRecord) -> bool:
    """True when the record has no mask file (nothing to check) or its mask marks at least one pixel."""
    if not record.mask_path:
        return True
    return bool(read_mask(record.mask_path).any())


def split_table(records: Sequence[ImageRecord], config: RunConfig) -> pa.Table:
    """The split as a pyarrow table (schema ``schemas.tables.SPLIT``)."""
    assignment = draw_split(records, config)
    dhash = dataset_hash(records)
    rows = [r for r in records if r.image_id in assignment]
    return pa.table(
        {
            "image_id": [r.image_id for r in rows],
            "path": [r.path for r in rows],
            "mask_path": [r.mask_path for r in rows],
            "image_class": [r.image_class for r in rows],
            "label_name": [r.label_name for r in rows],
            "label_index": [r.label_index for r in rows],
            "split": [assignment[r.image_id] for r in rows],
            "seed": [config.seed] * len(rows),
            "dataset_hash": [dhash] * len(rows),
        },
        schema=SPLIT,
    )


def write_split(table: pa.Table, path: str | Path) -> None:
    write_table_atomic(table, path)


def read_split(path: str | Path) -> pl.DataFrame:
    return read_table(path)
