"""Metric report files: the table of ``uniadc.metrics.metrics_table`` written atomically to Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from schemas.tables import METRICS
from storage.parquet import read_arrow, read_table, write_table_atomic
from storage.paths import store_path


def write_metrics_table(table: pl.DataFrame, path: str | Path) -> Path:
    """Writes a metrics table to ``path`` (a ``.parquet`` file) with the ``schemas.tables.METRICS`` schema.

    The file is written to a temporary sibling and moved into place with ``os.replace``, so readers see either
    the previous file or the complete new one, never a partial write.

    Args:
        table: Columns of ``METRICS`` (any order), e.g. from ``uniadc.metrics.metrics_table``.
        path: Target file; its folder is created if missing.

    Returns:
        The written path.

    Raises:
        ValueError: if the columns differ from the schema's or a column cannot be cast to its type.
    """
    path = store_path(path)
    if path.suffix != ".parquet":
        raise ValueError(f"path must end in .parquet, got {str(path)!r}")
    if set(table.columns) != set(METRICS.names):
        raise ValueError(f"table columns must be {METRICS.names}, got {table.columns}")
    try:
        arrow = table.select(METRICS.names).to_arrow().cast(METRICS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise ValueError(f"table does not fit the METRICS schema: {err}") from err
    return write_table_atomic(arrow, path, METRICS)


def read_metrics_table(path: str | Path) -> pl.DataFrame:
    """Reads a table written by :func:`write_metrics_table`, checking it against ``METRICS``."""
    arrow = read_arrow(path)
    if not arrow.schema.equals(METRICS):
        raise ValueError(f"{path} does not hold the METRICS schema: {arrow.schema}")
    return pl.from_arrow(arrow)


def read_confusion(path: str | Path) -> tuple[np.ndarray, list[str], list[str]]:
    """``confusion.parquet`` (long form) -> (counts (true classes, predicted classes), row names, column names)."""
    cells = read_table(path)
    rows = cells.select("true_index", "true_name").unique().sort("true_index")
    cols = cells.select("pred_index", "pred_name").unique().sort("pred_index")
    matrix = np.zeros((rows.height, cols.height), np.int64)
    matrix[cells["true_index"].to_numpy(), cells["pred_index"].to_numpy()] = cells["images"].to_numpy()
    return matrix, rows["true_name"].to_list(), cols["pred_name"].to_list()
