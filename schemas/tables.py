"""pyarrow schemas of every Parquet table the pipeline writes, declared once.

Each table is written as one part file per batch under a folder (``<table>/part-*.parquet``) and read back with
``polars.scan_parquet(folder / "*.parquet")``.
"""

from __future__ import annotations

import pyarrow as pa

_TS = pa.timestamp("us", tz="UTC")

#: The support/test split: one row per dataset image.
SPLIT = pa.schema(
    [
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("mask_path", pa.string()),
        ("image_class", pa.string()),
        ("label_name", pa.string()),
        ("label_index", pa.int16()),
        ("split", pa.string()),  # "support" | "test"
        ("seed", pa.int64()),
        ("dataset_hash", pa.string()),
    ]
)

#: Selected synthetic samples: one row per sample, committed after its arrays are written.
SAMPLES = pa.schema(
    [
        ("sample_id", pa.string()),
        ("run_id", pa.string()),
        ("category", pa.string()),
        ("label_index", pa.int16()),
        ("split", pa.string()),  # "synthetic"
        ("source_image_id", pa.string()),
        ("mask_type", pa.string()),
        ("mask_size", pa.string()),
        ("seed", pa.int64()),
        ("noise_factor", pa.float32()),
        ("selection_score", pa.float32()),
        ("zarr_index", pa.int32()),
        ("config_hash", pa.string()),
        ("created_at", _TS),
    ]
)

#: Per test image predictions written by the evaluate stage.
PREDICTIONS = pa.schema(
    [
        ("image_id", pa.string()),
        ("label_name", pa.string()),
        ("label_index", pa.int16()),
        ("image_score", pa.float32()),
        ("pred_index", pa.int16()),
        ("pred_name", pa.string()),
        ("zarr_index", pa.int32()),
        ("config_hash", pa.string()),
    ]
)

#: One row per (image class, metric table row) written by the metrics report.
METRICS = pa.schema(
    [
        ("image_class", pa.string()),
        ("i_auc", pa.float64()),
        ("p_auc", pa.float64()),
        ("pro", pa.float64()),
        ("acc", pa.float64()),
        ("miou", pa.float64()),
        ("n_images", pa.int64()),
    ]
)

#: One row per defect category (plus ``normal`` first and ``mean`` last): uniadc.analysis.category_metrics.
CATEGORY_METRICS = pa.schema(
    [
        ("image_class", pa.string()),
        ("category", pa.string()),
        ("i_auc", pa.float64()),
        ("p_auc", pa.float64()),
        ("pro", pa.float64()),
        ("acc", pa.float64()),
        ("iou", pa.float64()),
        ("n_images", pa.int64()),
    ]
)

#: Image-level confusion matrix in long form: one row per (true class, predicted class), zero counts included.
CONFUSION = pa.schema(
    [
        ("image_class", pa.string()),
        ("true_index", pa.int16()),
        ("true_name", pa.string()),
        ("pred_index", pa.int16()),
        ("pred_name", pa.string()),
        ("images", pa.int64()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "category_metrics": CATEGORY_METRICS,
    "confusion": CONFUSION,
    "split": SPLIT,
    "samples": SAMPLES,
    "predictions": PREDICTIONS,
    "metrics": METRICS,
}
