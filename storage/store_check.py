"""Read-only checks of a run folder's regenerated samples: consistency, and a digest to compare two stores.

Used by the reliability tests and ``benchmarks/reliability.py``: a store is consistent when every category
folder's committed Parquet rows have unique sample ids and Zarr indices, the indices are exactly ``0..n-1`` of
its Zarr arrays, and no committed sample is blank; two stores hold the same samples when their digests match
(array bytes, plus every row column except ``created_at`` and ``config_hash``, which covers the store path).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from schemas.tables import SAMPLES
from storage.arrays import open_group
from storage.parquet import read_parts
from storage.paths import store_path

ARRAYS = ("images", "masks", "class_masks")


def _category_dirs(run_root: Path) -> list[Path]:
    folder = store_path(run_root) / "regenerate"
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def sample_problems(run_root: str | Path) -> list[str]:
    """Every inconsistency found in ``run_root``'s regenerate folders (empty list: consistent)."""
    problems = []
    for d in _category_dirs(run_root):
        rows = read_parts(d / "samples", SAMPLES)
        group_path = d / "samples.zarr"
        if not group_path.is_dir():
            problems.append(f"{d}: no samples.zarr")
            continue
        group = open_group(group_path)
        missing = [a for a in ARRAYS if a not in set(group.array_keys())]
        if missing:
            problems.append(f"{group_path}: arrays {missing} missing")
            continue
        n = group["images"].shape[0]
        index = rows["zarr_index"].to_list()
        if rows["sample_id"].n_unique() != rows.height:
            problems.append(f"{d}: duplicate sample ids")
        if len(set(index)) != len(index):
            problems.append(f"{d}: duplicate zarr indices")
        if sorted(index) != list(range(n)):
            problems.append(f"{d}: committed indices {sorted(index)} are not 0..{n - 1}")
        masks = np.asarray(group["masks"][:])
        blank = [int(i) for i in index if 0 <= i < n and not masks[i].any()]
        if blank:
            problems.append(f"{d}: committed samples {blank} are blank")
    return problems


def samples_digest(run_root: str | Path) -> dict[str, str]:
    """category folder name -> sha256 of its arrays and rows (without ``created_at`` and ``config_hash``)."""
    out = {}
    for d in _category_dirs(run_root):
        h = hashlib.sha256()
        group = open_group(d / "samples.zarr")
        for name in ARRAYS:
            h.update(np.ascontiguousarray(group[name][:]).tobytes())
        rows = read_parts(d / "samples", SAMPLES).drop("created_at", "config_hash").sort("zarr_index")
        h.update(rows.write_csv().encode())
        out[d.name] = h.hexdigest()
    return out
