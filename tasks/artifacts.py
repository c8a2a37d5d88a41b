"""Markdown artifacts a user finds on the UI's Artifacts page, by stable key: the selected samples of each
category (``<run>-samples-<category>``) and the run's summary (``<run>-summary``: metrics, per-category table,
confusion matrix, the contact sheet and the worst predictions, images inlined as data URIs, which the Prefect
UI renders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image
from prefect.artifacts import create_markdown_artifact

from schemas.config import RunConfig
from schemas.manifests import Manifest
from storage.arrays import open_group, read_samples
from storage.parquet import read_parts, read_table
from storage.paths import store_path
from storage.reports import read_confusion
from storage.split import read_split
from tasks.common import artifact_key, canvas_chunk
from uniadc.metrics import METRIC_COLUMNS
from uniadc.report import ImageView, data_uri, outcome, thumbnail, worst_first
from uniadc.visualize import colour_classes, draw_outline, heatmap, overlay

STRIP = 8  # samples per category shown
WORST = 4  # predictions shown


def _pct(v: float | None) -> str:
    return "–" if v is None or v != v else f"{100 * v:.2f}"


def _md_table(columns: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def publish_samples(config: RunConfig, manifests: list[Manifest]) -> None:
    """One markdown artifact per category: counts, mean selection score and a strip of selected samples."""
    for m in manifests:
        group = open_group(store_path(m.run_dir) / m.uris["zarr"])
        idx = np.arange(min(STRIP, m.counts["samples"]))
        images, masks = read_samples(group, "images", idx), read_samples(group, "masks", idx)
        strip = np.concatenate(
            [thumbnail(draw_outline(i, k, pad=2), 96) for i, k in zip(images, masks, strict=True)], 1
        )
        create_markdown_artifact(
            f"### {m.key}: {m.counts['samples']} selected samples (mean score "
            f"{m.counts['mean_score_milli'] / 1000:.3f})\n\n"
            f"![first {len(idx)} samples of {m.key}]({data_uri(strip, strip.shape[1], jpeg=True)})\n\n"
            f"Store: `{m.run_dir}/{m.uris['zarr']}`",
            key=artifact_key(config, f"samples-{m.key}"),
            description=f"selected synthetic samples of {m.key} ({config.name})",
        )


def _worst_strips(
    root: Path, split: Manifest, evaluation: Manifest, config: RunConfig
) -> list[tuple[str, np.ndarray]]:
    preds = read_parts(root / evaluation.uris["predictions"]).sort("zarr_index")
    rows = preds.join(
        read_split(root / split.uris["split"]).select("image_id", "path", "mask_path"), on="image_id"
    )
    empty = np.zeros((1, 1), np.uint8)
    views = [
        ImageView(
            r["image_id"],
            int(r["label_index"]),
            r["label_name"],
            int(r["pred_index"]),
            r["pred_name"],
            float(r["image_score"]),
            empty,
            empty,
            empty,
            empty,
        )  # fmt: skip
        for r in rows.iter_rows(named=True)
    ]
    chosen = worst_first(views)[:WORST]
    picked = rows.filter(pl.col("image_id").is_in([v.image_id for v in chosen]))
    picked = picked.sort(pl.col("image_id").replace_strict({v.image_id: i for i, v in enumerate(chosen)}))
    images, _ = canvas_chunk(picked, config)
    maps = open_group(root / evaluation.uris["zarr"])
    idx = picked["zarr_index"].to_numpy()
    gt, anomaly = read_samples(maps, "gt_class_maps", idx), read_samples(maps, "anomaly_maps", idx)
    classes = read_samples(maps, "class_maps", idx)
    out = []
    for j, v in enumerate(chosen):
        tiles = [images[j], colour_classes(gt[j]), heatmap(anomaly[j]), overlay(images[j], classes[j])]
        strip = np.concatenate([thumbnail(t, 128) for t in tiles], axis=1)
        caption = f"{outcome(v)[1]}: {v.image_id} (true {v.true_name}, predicted {v.pred_name}, score {v.score:.3f})"
        out.append((caption, strip))
    return out


def publish_summary(
    config: RunConfig, split: Manifest, evaluation: Manifest, report: str, contact_sheet: str | None
) -> None:
    """The run's markdown summary artifact ``<run>-summary``."""
    root = store_path(evaluation.run_dir)
    table = read_table(root / evaluation.uris["metrics"])
    per_cat = read_table(root / evaluation.uris["category_metrics"])
    matrix, true_names, cols = read_confusion(root / evaluation.uris["confusion"])
    confusion = [[name, *matrix[i].tolist()] for i, name in enumerate(true_names)]
    parts = [
        f"# {config.name}: {config.setting}, {evaluation.counts['test']} test images",
        "## Metrics (percent)",
        _md_table(
            ["image class", *METRIC_COLUMNS, "images"],
            [
                [r["image_class"], *(_pct(r[c]) for c in METRIC_COLUMNS), r["n_images"]]
                for r in table.iter_rows(named=True)
            ],
        ),  # fmt: skip
        "## Per category (percent)",
        _md_table(
            ["category", "I-AUC", "P-AUC", "PRO", "Acc (recall)", "IoU", "images"],
            [
                [r["category"], *(_pct(r[c]) for c in ("i_auc", "p_auc", "pro", "acc", "iou")), r["n_images"]]
                for r in per_cat.iter_rows(named=True)
            ],
        ),  # fmt: skip
        "## Confusion matrix (images; rows true, columns predicted)",
        _md_table(["true \\ predicted", *cols], confusion),
        f"## Files\n\n- report: `{report}`"
        + (f"\n- contact sheet: `{contact_sheet}`" if contact_sheet else ""),
    ]
    if contact_sheet and store_path(contact_sheet).is_file():
        with store_path(contact_sheet).open("rb") as fh:
            sheet = Image.open(fh).convert("RGB")
        sheet.thumbnail((720, 720))
        arr = np.asarray(sheet)
        parts.append(
            f"## Selected synthetic samples\n\n![contact sheet]({data_uri(arr, arr.shape[1], jpeg=True)})"
        )
    worst = _worst_strips(root, split, evaluation, config)
    if worst:
        parts.append("## Worst predictions: image | ground truth | anomaly map | predicted classes")
        parts += [f"**{cap}**\n\n![{cap}]({data_uri(s, s.shape[1], jpeg=True)})" for cap, s in worst]
    create_markdown_artifact(
        "\n\n".join(parts), key=artifact_key(config, "summary"), description=f"summary of run {config.name}"
    )
