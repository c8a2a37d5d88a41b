"""Stage ``support``: the support images at run resolution, with foregrounds and (few-shot) defect masks.

Writes ``support-<key>/support.zarr`` with ``images`` (N, S, S, 3) uint8, ``masks`` (N, S, S) bool (defect
mask; all False for normal images), ``class_masks`` (N, S, S) uint8 and ``foregrounds`` (N, S, S) bool, and
``support-<key>/support.parquet`` (the split rows of the support images in Zarr order).
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
from prefect import task

from schemas.config import RunConfig
from schemas.manifests import Manifest
from storage.arrays import create_group, write_sample
from storage.images import read_image, read_mask, resize_image, resize_mask
from storage.layout import RunLayout, provenance
from storage.parquet import write_table_atomic
from storage.split import read_split
from tasks.common import cache_key, file_sha256

STAGE = "support"
STAGE_VERSION = "1"


def support_key(config: RunConfig, split: Manifest) -> str:
    parts = [split.content_hash, str(config.image_size)]
    if config.support.foreground != "u2netp":  # the default keeps the keys of stores made before the option
        parts += [config.support.model_dump_json(), file_sha256(config.support.foreground_onnx or "")]
    return cache_key(STAGE, STAGE_VERSION, *parts)


def _foregrounds(config: RunConfig, images: np.ndarray) -> np.ndarray:
    from uniadc.foreground import ForegroundEstimator

    sc = config.support
    if sc.foreground == "u2netp":
        return ForegroundEstimator()(images)
    return ForegroundEstimator(
        sc.foreground_onnx, threshold=sc.foreground_threshold, input_size=sc.foreground_size,
        mean=sc.foreground_mean, std=sc.foreground_std, scale=sc.foreground_scale,
        activation=sc.foreground_activation, output_index=sc.foreground_output,
    )(images)  # fmt: skip


@task(name="support", persist_result=True)
def prepare_support(config: RunConfig, split: Manifest, key: str) -> Manifest:
    """Read, resize and segment the support images once for every later stage."""
    layout = RunLayout.for_config(config.store, config.name)
    rows = (
        read_split(layout.root / split.uris["split"])
        .filter(pl.col("split") == "support")
        .sort(["label_index", "image_id"])
    )
    size = config.image_size
    n = rows.height
    images = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), bool)
    for i, row in enumerate(rows.iter_rows(named=True)):
        image = read_image(row["path"])
        images[i] = resize_image(image, size)
        if row["mask_path"]:
            masks[i] = resize_mask(read_mask(row["mask_path"], expected_hw=image.shape[:2]), size)
    labels = rows["label_index"].to_numpy().astype(np.uint8)
    foregrounds = np.ones_like(masks)
    normal = labels == 0
    if normal.any():
        foregrounds[normal] = _foregrounds(config, images[normal])
    out = layout.stage_dir(STAGE, key)
    group = create_group(
        out / "support.zarr",
        {
            "images": ((n, size, size, 3), "uint8"),
            "masks": ((n, size, size), "bool"),
            "class_masks": ((n, size, size), "uint8"),
            "foregrounds": ((n, size, size), "bool"),
        },
        attrs=provenance(config.to_json(), {"stage": STAGE, "cache_key": key}),
        overwrite=True,
    )
    for i in range(n):
        write_sample(
            group,
            i,
            images=images[i],
            masks=masks[i],
            class_masks=masks[i] * labels[i],
            foregrounds=foregrounds[i],
        )
    write_table_atomic(rows.to_arrow(), out / "support.parquet")
    digest = hashlib.sha256(images.tobytes() + masks.tobytes() + foregrounds.tobytes()).hexdigest()
    return Manifest(
        stage=STAGE,
        run_dir=str(layout.root),
        uris={
            "zarr": str((out / "support.zarr").relative_to(layout.root)),
            "rows": str((out / "support.parquet").relative_to(layout.root)),
        },
        counts={"normal": int(normal.sum()), "anomaly": int((~normal).sum())},
        content_hash=digest,
        cache_key=key,
    )
