from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import zarr

from schemas.tables import SAMPLES
from storage.arrays import create_group, open_group, read_samples, write_sample
from storage.errors import StoreError
from storage.parquet import list_parts, read_parts, write_part, write_table_atomic


def _rows(i: int) -> dict[str, list]:
    import datetime as dt

    return {
        "sample_id": [f"s{i}"],
        "run_id": ["r"],
        "category": ["c"],
        "label_index": [1],
        "split": ["synthetic"],
        "source_image_id": ["img"],
        "mask_type": ["ellipse"],
        "mask_size": ["small"],
        "seed": [0],
        "noise_factor": [0.5],
        "selection_score": [0.9],
        "zarr_index": [i],
        "config_hash": ["h"],
        "created_at": [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)],
    }


def test_round_trip_and_plain_readability(tmp_path):
    g = create_group(
        tmp_path / "s.zarr",
        {"images": ((3, 8, 8, 3), "uint8"), "masks": ((3, 8, 8), "bool")},
        attrs={"config": "{}", "git_sha": "x"},
    )
    img = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    write_sample(g, 1, images=img, masks=img[..., 0] > 50)
    write_part(tmp_path / "rows", 0, _rows(1), SAMPLES)
    # plain zarr + polars, no project code
    plain = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert plain["images"].chunks == (1, 8, 8, 3)
    assert plain.attrs["git_sha"] == "x"
    df = pl.scan_parquet(str(tmp_path / "rows" / "*.parquet")).collect()
    assert df["zarr_index"].to_list() == [1]
    np.testing.assert_array_equal(plain["images"][df["zarr_index"][0]], img)
    np.testing.assert_array_equal(read_samples(open_group(tmp_path / "s.zarr"), "images", [1]), img[None])


def test_reopen_with_other_layout_is_an_error(tmp_path):
    create_group(tmp_path / "s.zarr", {"images": ((3, 8, 8, 3), "uint8")}, attrs={})
    create_group(tmp_path / "s.zarr", {"images": ((3, 8, 8, 3), "uint8")}, attrs={})  # same layout: reopen
    with pytest.raises(StoreError, match="another layout"):
        create_group(tmp_path / "s.zarr", {"images": ((4, 8, 8, 3), "uint8")}, attrs={})


def test_crash_between_arrays_and_rows_leaves_no_visible_sample(tmp_path, monkeypatch):
    g = create_group(tmp_path / "s.zarr", {"images": ((2, 4, 4, 3), "uint8")}, attrs={})
    write_sample(g, 0, images=np.ones((4, 4, 3), np.uint8))
    import pyarrow.parquet as pq

    def boom(*a, **k):
        raise OSError("disk died")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        write_part(tmp_path / "rows", 0, _rows(0), SAMPLES)
    monkeypatch.undo()
    assert list_parts(tmp_path / "rows") == []
    assert not list((tmp_path / "rows").glob("*.partial"))
    assert read_parts(tmp_path / "rows", SAMPLES).height == 0


def test_schema_enforced_on_write(tmp_path):
    bad = pa.table({"x": [1]})
    with pytest.raises(StoreError, match="do not match the table schema"):
        write_table_atomic(bad, tmp_path / "t.parquet", SAMPLES)
