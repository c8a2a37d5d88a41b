"""Stage ``report``: ``report.html`` in the run folder, built from the stored outputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
from prefect import task

from schemas.config import RunConfig
from schemas.manifests import Manifest
from schemas.priors import PriorsFile
from storage.arrays import open_group, read_samples
from storage.checkpoints import reference_calibration
from storage.evaluation import load_test_chunk
from storage.files import write_text_atomic
from storage.parquet import read_parts
from storage.split import read_split
from uniadc.metrics import METRIC_COLUMNS
from uniadc.report import CategoryView, render_report

SAMPLES_SHOWN = 6
TESTS_SHOWN = 3


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
    root = Path(evaluation.run_dir)
    metrics = pl.read_parquet(root / evaluation.uris["metrics"])
    split_rows = read_split(root / split.uris["split"]).select("image_id", "path", "mask_path")
    preds = (
        read_parts(root / evaluation.uris["predictions"]).sort("zarr_index").join(split_rows, on="image_id")
    )
    maps = open_group(root / evaluation.uris["zarr"])
    names = ["normal", *priors.names] + (["other"] if config.discriminator.open_set else [])
    views = []
    by_name = {m.key: m for m in samples}
    for index, prior in enumerate(priors.categories, start=1):
        m = by_name[prior.name]
        g = open_group(root / m.uris["zarr"])
        shown = np.arange(min(SAMPLES_SHOWN, m.counts["samples"]))
        test = preds.filter(pl.col("label_index") == index).head(TESTS_SHOWN)
        views.append(
            _view(
                prior.name,
                index,
                prior.descriptions[0],
                read_samples(g, "images", shown),
                read_samples(g, "masks", shown),
                test,
                maps,
                config.image_size,
            )
        )
    normal = _view(
        "normal (test images without defects)",
        0,
        "",
        np.zeros((0, 1, 1, 3), np.uint8),
        np.zeros((0, 1, 1), bool),
        preds.filter(pl.col("label_index") == 0).head(TESTS_SHOWN),
        maps,
        config.image_size,
    )
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
            f"{config.discriminator.backbone} + {config.discriminator.text_encoder}, "
            f"{model.counts['iterations']} iterations, last iteration kept",
        ),
        ("threshold", _threshold_line(config, root / model.uris["checkpoint"])),
        ("test images", str(evaluation.counts["test"])),
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
        views,
        names,
        normal_examples=normal,
    )
    out = root / "report.html"
    write_text_atomic(out, page)
    return str(out)


def _threshold_line(config: RunConfig, checkpoint) -> str:
    cal = reference_calibration(checkpoint)
    if cal is None:
        return f"{config.threshold} on the mean of the class maps (fixed; never tuned on test data)"
    probe = (
        f"pixel AUROC on the held-out support tile: learned {100 * cal['probe_auc_learned']:.1f}, reference "
        f"{100 * cal['probe_auc_reference']:.1f}; learned map's maximum on its normal views "
        f"{cal['probe_learned_max']:.3f}"
        if math.isfinite(cal.get("probe_auc_learned", math.nan))
        else "no held-out tile"
    )
    if math.isfinite(cal.get("learned_tau_logit", math.nan)):
        return (
            f"{config.threshold} on the learned map shifted to its held-out calibration (learned map "
            f"{1 / (1 + math.exp(-cal['learned_tau_logit'])):.3f}; {probe}; no test image)"
        )
    return (
        f"{config.threshold} on the calibrated reference map, i.e. nearest-neighbour distance tau = "
        f"{cal['threshold']:.4f} (rule {config.discriminator.calibration}, fitted on leave-one-out support "
        f"views only; {probe}; no test image; slope {cal['scale']:.4f})"
    )


def _view(
    name, index, description, synthetic, synthetic_masks, test: pl.DataFrame, maps, size
) -> CategoryView:
    idx = test["zarr_index"].to_numpy()
    images, _ = load_test_chunk(test, size)
    return CategoryView(
        name=name,
        index=index,
        description=description,
        synthetic=synthetic,
        synthetic_masks=synthetic_masks,
        test_images=images,
        test_gt=read_samples(maps, "gt_class_maps", idx),
        test_pred=read_samples(maps, "class_maps", idx),
        test_pred_names=test["pred_name"].to_list(),
    )
