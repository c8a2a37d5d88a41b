"""Stage ``evaluate``: the test split through the trained discriminator -> maps, rows, metrics.

Writes ``evaluate-<key>/maps.zarr`` (``anomaly_maps`` (N, S, S) float32, ``class_maps`` (N, S, S) uint8,
``gt_class_maps`` (N, S, S) uint8, ``class_argmax`` (N, S, S) uint8 unthresholded ``1 + argmax`` class, and
with a reference ``reference_maps`` (N, S, S) float32, its calibrated map),
``evaluate-<key>/predictions/`` (one Parquet row per test image) and
``evaluate-<key>/metrics.parquet``. Test images and masks land on ``image_size`` canvases by
``dataset.resize`` (``uniadc.geometry``: squashed, letterboxed, or tiled and stitched then letterboxed; masks
by nearest neighbour; ``valid`` in the Zarr group marks the pixels that count), so every metric is computed at
one stated resolution over the valid pixels. The threshold is the config's value on the
model's anomaly map; with ``discriminator.reference: knn`` that map is calibrated on training data (0.5 = the
fitted tau, stored in the checkpoint). Nothing here looks at test statistics to choose it. Image scores (and
I-AUC) are the prediction's: the map's maximum, or with ``discriminator.image_score: edge`` the edge-aware score
(``uniadc.reference.edge``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from prefect import task

from schemas.config import RunConfig
from schemas.manifests import Manifest
from schemas.priors import PriorsFile
from schemas.tables import CATEGORY_METRICS, CONFUSION, PREDICTIONS
from storage.arrays import create_group, write_sample
from storage.evaluation import read_test_chunk
from storage.layout import RunLayout, provenance
from storage.parquet import write_part, write_table_atomic
from storage.reports import write_metrics_table
from storage.split import read_split
from tasks.common import artifact_key, cache_key, geometry_line, match_submitter_threads
from tasks.progress import StageProgress
from tasks.train import load_model
from uniadc import metrics
from uniadc.analysis import category_metrics, confusion_matrix
from uniadc.geometry import fit_ground_truth
from uniadc.geometry.fitted import predict_canvas

STAGE = "evaluate"
# 3: metrics per category and the confusion matrix; 4: dataset.resize canvases; 5: mirrored padding
STAGE_VERSION = "6"  # 6: image scores and I-AUC from the model's decision (edge-aware score)
CATEGORY_FILE = "category_metrics.parquet"
CONFUSION_FILE = "confusion.parquet"
CHUNK = 64


def evaluate_key(config: RunConfig, split: Manifest, model: Manifest) -> str:
    return cache_key(
        STAGE,
        STAGE_VERSION,
        split.content_hash,
        model.content_hash,
        str(config.image_size),
        str(config.threshold),
        f"{config.dataset.resize}|{config.dataset.tile_overlap}",
    )


@task(name="evaluate", persist_result=True)
def evaluate_model(
    config: RunConfig, priors: PriorsFile, split: Manifest, model_manifest: Manifest, key: str
) -> Manifest:
    """Predict every test image, store maps and rows, compute I-AUC / P-AUC / PRO / Acc / mIoU."""
    match_submitter_threads(config)
    layout = RunLayout.for_run(config)
    out = layout.stage_dir(STAGE, key)
    model = load_model(layout.root / model_manifest.uris["checkpoint"])
    rows = read_split(layout.root / split.uris["split"]).filter(pl.col("split") == "test").sort("image_id")
    n, size, k = rows.height, config.image_size, len(priors.categories)
    names = ["normal", *priors.names] + (["other"] if config.discriminator.open_set else [])
    arrays = {
        "anomaly_maps": ((n, size, size), "float32"),
        "class_maps": ((n, size, size), "uint8"),
        "gt_class_maps": ((n, size, size), "uint8"),
        "class_argmax": ((n, size, size), "uint8"),
        "valid": ((n, size, size), "bool"),
    }
    if model.reference is not None:
        arrays["reference_maps"] = ((n, size, size), "float32")
    group = create_group(
        out / "maps.zarr",
        arrays,
        attrs=provenance(config.to_json(), {"stage": STAGE, "cache_key": key, "class_names": names}),
        overwrite=True,
    )
    anomaly_maps = np.zeros((n, size, size), np.float32)
    class_maps = np.zeros((n, size, size), np.uint8)
    gt_maps = np.zeros((n, size, size), np.uint8)
    valid = np.zeros((n, size, size), bool)
    image_pred = np.zeros(n, np.int64)
    image_score = np.zeros(n, np.float32)
    modes: list[str] = []
    with StageProgress(artifact_key(config, "evaluate-progress"), "evaluate", n, unit="img") as bar:
        for part, start in enumerate(range(0, n, CHUNK)):
            chunk = rows.slice(start, CHUNK)
            raw = read_test_chunk(chunk)
            pred = predict_canvas(
                model, [im for im, _ in raw], config.threshold, config.dataset.resize,
                config.dataset.tile_overlap,
            )  # fmt: skip
            gt = np.stack([fit_ground_truth(g, size, config.dataset.resize) for _, g in raw])
            stop = start + chunk.height
            image_pred[start:stop], image_score[start:stop] = pred.image_classes, pred.image_scores
            valid[start:stop], modes = pred.valid, modes + pred.modes
            anomaly_maps[start:stop], class_maps[start:stop], gt_maps[start:stop] = (
                pred.anomaly_maps,
                pred.class_maps,
                gt,
            )
            for j in range(chunk.height):
                write_sample(
                    group,
                    start + j,
                    anomaly_maps=pred.anomaly_maps[j],
                    class_maps=pred.class_maps[j],
                    gt_class_maps=gt[j],
                    class_argmax=pred.class_argmax[j],
                    valid=pred.valid[j],
                    **({} if pred.reference_maps is None else {"reference_maps": pred.reference_maps[j]}),
                )
            write_part(
                out / "predictions",
                part,
                {
                    "image_id": chunk["image_id"].to_list(),
                    "label_name": chunk["label_name"].to_list(),
                    "label_index": chunk["label_index"].to_list(),
                    "image_score": pred.image_scores.tolist(),
                    "pred_index": pred.image_classes.tolist(),
                    "pred_name": [names[int(c)] for c in pred.image_classes],
                    "zarr_index": list(range(start, stop)),
                    "config_hash": [config.config_hash()] * chunk.height,
                },
                PREDICTIONS,
            )
            bar.update(stop)
    # Acc/mIoU are defined over the K known categories; an open-set "other" prediction counts as wrong.
    eval_classes = np.where(class_maps > k, 0, class_maps) if config.discriminator.open_set else class_maps
    labels = rows["label_index"].to_numpy().astype(np.int64)
    used = None if valid.all() else valid  # squashed images: every pixel counts (the historical result)
    counts = {m: modes.count(m) for m in sorted(set(modes))}
    print(f"evaluate: {n} test images, {geometry_line(config, counts)}")
    result = metrics.evaluate(
        anomaly_maps, gt_maps, eval_classes, k, labels=labels, valid=used, image_scores=image_score
    )
    image_class = config.dataset.image_class or "magnetic_tile"
    table = metrics.metrics_table({image_class: result})
    write_metrics_table(table, out / "metrics.parquet")
    write_breakdown(out, image_class, anomaly_maps, gt_maps, eval_classes, image_pred, labels, names, k, used)
    digest = hashlib.sha256(anomaly_maps.tobytes() + class_maps.tobytes()).hexdigest()
    return Manifest(
        stage=STAGE,
        run_dir=str(layout.root),
        uris={
            "zarr": str((out / "maps.zarr").relative_to(layout.root)),
            "predictions": str((out / "predictions").relative_to(layout.root)),
            "metrics": str((out / "metrics.parquet").relative_to(layout.root)),
            "category_metrics": str((out / CATEGORY_FILE).relative_to(layout.root)),
            "confusion": str((out / CONFUSION_FILE).relative_to(layout.root)),
        },
        counts={"test": n, **{f"resize_{m}": c for m, c in counts.items()}},
        content_hash=digest,
        cache_key=key,
    )


def write_breakdown(
    out: Path,
    image_class: str,
    anomaly_maps: np.ndarray,
    gt_maps: np.ndarray,
    eval_classes: np.ndarray,
    image_pred: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    k: int,
    valid: np.ndarray | None = None,
) -> None:
    """``category_metrics.parquet`` (one row per category) and ``confusion.parquet`` (image level; columns
    include ``other`` for an open-set model)."""
    per_category = category_metrics(anomaly_maps, gt_maps, eval_classes, labels, names[: k + 1], valid=valid)
    write_table_atomic(
        pa.Table.from_pylist(
            [{"image_class": image_class, **r} for r in per_category], schema=CATEGORY_METRICS
        ),
        out / CATEGORY_FILE,
        CATEGORY_METRICS,
    )
    matrix = confusion_matrix(labels, image_pred, k + 1, len(names))
    cells = [
        {"image_class": image_class, "true_index": i, "true_name": names[i], "pred_index": j,
         "pred_name": names[j], "images": int(matrix[i, j])}
        for i in range(k + 1)
        for j in range(len(names))
    ]  # fmt: skip
    write_table_atomic(pa.Table.from_pylist(cells, schema=CONFUSION), out / CONFUSION_FILE, CONFUSION)
