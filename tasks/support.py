"""Stage ``support``: the support images at run resolution, with foregrounds and (few-shot) defect masks.

Writes ``support-<key>/support.zarr`` with ``images`` (N, S, S, 3) uint8, ``masks`` (N, S, S) bool (defect
mask; all False for normal images), ``class_masks`` (N, S, S) uint8 and ``foregrounds`` (N, S, S) bool (normal
images: the estimated foreground inside the picture; defect images: the picture, i.e. all but letterbox padding),
``valid`` (N, S, S) bool (the picture), and ``support-<key>/support.parquet`` (the split rows of the support
images in Zarr order).
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
from prefect import task

from schemas.config import RunConfig
from schemas.manifests import Manifest
from storage.arrays import create_group, write_sample
from storage.images import read_image, read_mask
from storage.layout import RunLayout, provenance
from storage.parquet import write_table_atomic
from storage.split import read_split
from tasks.common import cache_key, file_sha256, geometry_line
from uniadc.geometry import cut_tiles, fit_image, fit_mask, resolved_resize, tile_windows

STAGE = "support"
STAGE_VERSION = "4"  # 2: dataset.resize (letterbox / tiles); 3: letterbox padding mirrors the image; 4: valid
FEW_SHOT_VERSION = "defect-foreground=picture"  # keyed for few-shot only: zero-shot arrays are unchanged


def support_key(config: RunConfig, split: Manifest) -> str:
    geometry = f"{config.dataset.resize}|{config.dataset.tile_overlap}"
    parts = [split.content_hash, str(config.image_size), geometry]
    if config.support.foreground != "u2netp":  # the default keeps the keys of stores made before the option
        parts += [config.support.model_dump_json(), file_sha256(config.support.foreground_onnx or "")]
    if config.setting == "few_shot":  # defect images' foregrounds became their picture (zero-shot has none)
        parts.append(FEW_SHOT_VERSION)
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


def _fitted_support(
    config: RunConfig, rows: pl.DataFrame
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Support images, masks and valid pixels at ``image_size`` by ``dataset.resize``; in tile mode every
    window is one support image (row ``image_id`` + ``@top,left``), defect images keep the windows that show
    their defect."""
    size = config.image_size
    images, masks, valid, modes, keep = [], [], [], [], []
    for row in rows.iter_rows(named=True):
        image = read_image(row["path"])
        mask = np.zeros(image.shape[:2], bool)
        if row["mask_path"]:
            mask = read_mask(row["mask_path"], expected_hw=image.shape[:2])
        mode = resolved_resize(config.dataset.resize, *image.shape[:2])
        modes.append(mode)
        if mode == "tile":
            windows = tile_windows(*image.shape[:2], size, config.dataset.tile_overlap)
            tiles, tile_masks = cut_tiles(image, windows, size), cut_tiles(mask, windows, size)
            chosen = list(range(len(windows)))
            if row["label_index"] != 0:
                area = tile_masks.reshape(len(windows), -1).sum(axis=1)
                chosen = [j for j in chosen if area[j] > 0] or [int(area.argmax())]
            for j in chosen:
                images.append(tiles[j])
                masks.append(tile_masks[j])
                valid.append(np.ones((size, size), bool))
                keep.append(dict(row, image_id=f"{row['image_id']}@{windows[j].top},{windows[j].left}"))
            continue
        fitted, ok = fit_image(image, size, mode)
        images.append(fitted)
        masks.append(fit_mask(mask, size, mode))
        valid.append(ok)
        keep.append(row)
    table = pl.DataFrame(keep, schema=rows.schema)
    return table, np.stack(images), np.stack(masks), np.stack(valid), modes


@task(name="support", persist_result=True)
def prepare_support(config: RunConfig, split: Manifest, key: str) -> Manifest:
    """Read, resize and segment the support images once for every later stage."""
    layout = RunLayout.for_run(config)
    rows = (
        read_split(layout.root / split.uris["split"])
        .filter(pl.col("split") == "support")
        .sort(["label_index", "image_id"])
    )
    rows, images, masks, valid, modes = _fitted_support(config, rows)
    size, n = config.image_size, rows.height
    counts = {m: modes.count(m) for m in sorted(set(modes))}
    print(f"support: {n} images at {size}x{size} ({geometry_line(config, counts, metrics=False)})")
    labels = rows["label_index"].to_numpy().astype(np.uint8)
    # a defect image's "foreground" is its picture: cut-paste keeps edge defects on the picture's edge
    foregrounds = valid.copy()
    normal = labels == 0
    if normal.any():
        foregrounds[normal] = _foregrounds(config, images[normal]) & valid[normal]  # never in the padding
    out = layout.stage_dir(STAGE, key)
    group = create_group(
        out / "support.zarr",
        {
            "images": ((n, size, size, 3), "uint8"),
            "masks": ((n, size, size), "bool"),
            "class_masks": ((n, size, size), "uint8"),
            "foregrounds": ((n, size, size), "bool"),
            "valid": ((n, size, size), "bool"),
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
            valid=valid[i],
        )
    write_table_atomic(rows.to_arrow(), out / "support.parquet")
    # ``valid`` (the picture) follows from the images' geometry, already in the digest: left out so the
    # samples regenerated from these images keep their keys
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
