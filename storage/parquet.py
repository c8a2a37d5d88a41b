"""Parquet tables as folders of part files, one part per batch, each written atomically.

A part is written to a temporary sibling unique to its writer (``storage.files.atomic_file``) and renamed into
place, so a reader globbing ``*.parquet`` never sees a half-written part, and two writers of one part never
clash. Parts are validated against the declared pyarrow schema on write. On an object store a part is uploaded
once under its final key (``storage.files.atomic_file``), so the same holds there.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from storage.errors import StoreError
from storage.files import atomic_file
from storage.paths import is_remote, store_path


def write_table_atomic(table: pa.Table, path: str | Path, schema: pa.Schema | None = None) -> Path:
    """Write one Parquet file atomically (unique temporary + fsync + rename)."""
    path = store_path(path)
    if schema is not None:
        if not table.schema.equals(schema, check_metadata=False):
            try:
                table = table.cast(schema)
            except (pa.ArrowInvalid, ValueError) as exc:
                raise StoreError(f"{path}: rows do not match the table schema: {exc}") from exc
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def write_part(folder: str | Path, index: int, rows: dict[str, list], schema: pa.Schema) -> Path:
    """Write rows (column -> values) as part ``index`` of the table in ``folder``."""
    table = pa.table({name: rows[name] for name in schema.names}, schema=schema)
    return write_table_atomic(table, store_path(folder) / part_name(index), schema)


def list_parts(folder: str | Path) -> list[Path]:
    folder = store_path(folder)
    if is_remote(folder):
        fs, key = folder.fs, folder.path
        names = fs.glob(f"{key}/part-*.parquet")
        return sorted(folder / n.rsplit("/", 1)[-1] for n in names)
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def read_parts(folder: str | Path, schema: pa.Schema | None = None) -> pl.DataFrame:
    """All committed parts of a table as one DataFrame (empty with the schema's columns when none)."""
    parts = list_parts(folder)
    if not parts:
        if schema is None:
            return pl.DataFrame()
        return pl.from_arrow(schema.empty_table())
    if not is_remote(folder):
        return pl.read_parquet([str(p) for p in parts])
    return pl.concat([read_table(p) for p in parts], how="vertical")


def read_table(path: str | Path) -> pl.DataFrame:
    """One Parquet file (local or on an object store) as a DataFrame."""
    path = store_path(path)
    return pl.read_parquet(path) if not is_remote(path) else pl.from_arrow(read_arrow(path))


def read_arrow(path: str | Path) -> pa.Table:
    """One Parquet file (local or on an object store) as a pyarrow table, schema metadata included."""
    path = store_path(path)
    if not is_remote(path):
        return pq.read_table(path)
    with path.open("rb") as fh:
        return pq.read_table(fh)
