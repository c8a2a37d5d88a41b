"""Stage ``report``: ``report.html`` in the run folder, built from the stored outputs."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from prefect import task

from schemas.config import RunConfig
from schemas.manifests import Manifest
from schemas.priors import PriorsFile
from storage.arrays import open_group, read_samples
from storage.checkpoints import reference_calibration
from storage.files import write_text_atomic
from storage.parquet import read_parts, read_table
from storage.paths import store_path
from storage.reports import read_confusion
from storage.split import read_split
from tasks.common import canvas_chunk, geometry_line
from uniadc.metrics import METRIC_COLUMNS
from uniadc.report import ImageView, SyntheticView, render_report, thumbnail

CHUNK = 64


@task(name="report")
def write_report(
    config: RunConfig,
    priors: PriorsFile,
    split: Manifest,
    support: Manifest,
    samples: list[Manifest],
    model: Manifest,
    evaluation: Manifest,
) -> str:
    root = store_path(evaluation.run_dir)
    metrics = read_table(root / evaluation.uris["metrics"])
    per_category = read_table(root / evaluation.uris["category_metrics"]).to_dicts()
    confusion, _, _ = read_confusion(root / evaluation.uris["confusion"])
    split_rows = read_split(root / split.uris["split"]).select("image_id", "path", "mask_path")
    preds = (
        read_parts(root / evaluation.uris["predictions"]).sort("zarr_index").join(split_rows, on="image_id")
    )
    maps = open_group(root / evaluation.uris["zarr"])
    names = ["normal", *priors.names] + (["other"] if config.discriminator.open_set else [])
    by_name = {m.key: m for m in samples}
    synthetic = []
    for prior in priors.categories:
        g = open_group(root / by_name[prior.name].uris["zarr"])
        shown = np.arange(by_name[prior.name].counts["samples"])
        synthetic.append(
            SyntheticView(
                prior.name,
                prior.descriptions[0],
                [thumbnail(x) for x in read_samples(g, "images", shown)],
                [thumbnail(x.astype(np.uint8), nearest=True) > 0 for x in read_samples(g, "masks", shown)],
            )
        )
    tests, small_maps, small_masks = _test_items(preds, maps, config)
    backend = config.synthesis.resolved_backend(config.setting)
    summary = [
        ("dataset", f"{config.dataset.kind} at {config.dataset.root} / {config.dataset.image_class or ''}"),
        (
            "setting",
            f"{config.setting}: {support.counts['normal']} normal + {support.counts['anomaly']} defect "
            "support images; every other image is a test image",
        ),
        (
            "synthesis",
            f"{backend}, {config.synthesis.samples_per_category} selected per category from "
            f"{config.synthesis.masks_per_sample} masks x noise factors "
            f"{list(config.synthesis.noise_factors)}, scorer "
            f"{config.selection.resolved_scorer(backend)}",
        ),
        (
            "discriminator",
            f"{config.discriminator.backbone} + {_text_encoder_line(config)}, "
            f"{model.counts['iterations']} iterations, last iteration kept",
        ),
        ("threshold", _threshold_line(config, root / model.uris["checkpoint"])),
        ("test images", str(evaluation.counts["test"])),
        ("image geometry", _geometry_line(config, evaluation)),
    ]
    rows = [
        [r["image_class"], *(f"{100 * r[c]:.2f}" for c in METRIC_COLUMNS), r["n_images"]]
        for r in metrics.iter_rows(named=True)
    ]
    page = render_report(
        f"uniadc run {config.name}",
        summary,
        ["image class", *METRIC_COLUMNS, "images"],
        rows,
        per_category,
        confusion,
        names,
        synthetic,
        tests,
        small_maps,
        small_masks,
    )
    out = root / "report.html"
    write_text_atomic(out, page)
    return str(out)


def _geometry_line(config: RunConfig, evaluation: Manifest) -> str:
    counts = {k.removeprefix("resize_"): n for k, n in evaluation.counts.items() if k.startswith("resize_")}
    return geometry_line(config, counts)


def _text_encoder_line(config: RunConfig) -> str:
    d = config.discriminator
    used = d.resolved_text_encoder()
    return used if used == d.text_encoder else f"{used} (fallback: {d.text_encoder} has no weights)"


def _threshold_line(config: RunConfig, checkpoint) -> str:
    cal = reference_calibration(checkpoint)
    if cal is None:
        return f"{config.threshold} on the mean of the class maps (fixed; never tuned on test data)"
    probe = (
        f"pixel AUROC on the held-out support tile(s): learned {100 * cal['probe_auc_learned']:.1f}, reference "
        f"{100 * cal['probe_auc_reference']:.1f}; learned map's maximum on its normal views "
        f"{cal['probe_learned_max']:.3f}"
        if math.isfinite(cal.get("probe_auc_learned", math.nan))
        else "no held-out tile"
    )
    if math.isfinite(cal.get("learned_tau_logit", math.nan)):
        return (
            f"{config.threshold} on the learned map shifted to its held-out calibration (learned map "
            f"{1 / (1 + math.exp(-cal['learned_tau_logit'])):.3f}, rule {config.discriminator.calibration} "
            f"on the held-out support views; {probe}; no test image)"
        )
    return (
        f"{config.threshold} on the calibrated reference map, i.e. nearest-neighbour distance tau = "
        f"{cal['threshold']:.4f} (rule {config.discriminator.calibration}, fitted on leave-one-out support "
        f"views only; {probe}; no test image; slope {cal['scale']:.4f})"
    )


def _test_items(
    preds: pl.DataFrame, maps, config: RunConfig
) -> tuple[list[ImageView], np.ndarray, np.ndarray]:
    """Every test image at thumbnail size (read in chunks, so a large test set never sits in memory at full
    size), with the thumbnail anomaly maps and ground-truth masks for the PRO curve."""
    items: list[ImageView] = []
    small_maps, small_masks = [], []
    for start in range(0, preds.height, CHUNK):
        chunk = preds.slice(start, CHUNK)
        idx = chunk["zarr_index"].to_numpy()
        images, _ = canvas_chunk(chunk, config)
        gt = read_samples(maps, "gt_class_maps", idx)
        anomaly = read_samples(maps, "anomaly_maps", idx)
        classes = read_samples(maps, "class_maps", idx)
        for j, row in enumerate(chunk.iter_rows(named=True)):
            item = ImageView(
                image_id=row["image_id"],
                true_index=int(row["label_index"]),
                true_name=row["label_name"],
                pred_index=int(row["pred_index"]),
                pred_name=row["pred_name"],
                score=float(row["image_score"]),
                image=thumbnail(images[j]),
                gt=thumbnail(gt[j], nearest=True),
                anomaly=thumbnail(anomaly[j]),
                classes=thumbnail(classes[j], nearest=True),
            )
            items.append(item)
            small_maps.append(item.anomaly)
            small_masks.append(item.gt > 0)
    return items, np.stack(small_maps), np.stack(small_masks)
