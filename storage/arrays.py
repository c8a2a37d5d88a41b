"""Zarr v3 arrays of a stage: preallocated, one sample per chunk, blosc-zstd.

Each array is created once with its final length and chunked one sample per chunk, so concurrent writers of
different samples never share a chunk (the measured failure mode of concurrent appends). A sample becomes visible
only when the Parquet row that points at its index is committed (``storage.parquet``); an index without a row is
garbage to be overwritten, never read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from storage.errors import StoreError

_COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


def create_group(
    path: str | Path,
    arrays: dict[str, tuple[tuple[int, ...], str]],
    attrs: dict[str, Any],
    overwrite: bool = False,
) -> zarr.Group:
    """Create (or open, when it exists with the same layout) a group of preallocated arrays.

    Args:
        path: group folder (``*.zarr``).
        arrays: name -> (shape, dtype); the first axis is the sample axis, chunked by 1.
        attrs: group attributes (resolved config JSON, versions, git SHA).
        overwrite: start from nothing even if the group exists.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        group = zarr.open_group(str(path), mode="r+")
        for name, (shape, dtype) in arrays.items():
            if name not in group or group[name].shape != tuple(shape) or str(group[name].dtype) != dtype:
                raise StoreError(f"{path}/{name}: exists with another layout; remove it or use a new store")
        return group
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update(attrs)
    for name, (shape, dtype) in arrays.items():
        group.create_array(
            name,
            shape=tuple(shape),
            dtype=dtype,
            chunks=(1, *shape[1:]),
            compressors=_COMPRESSOR,
            fill_value=0,
        )
    return group


def open_group(path: str | Path, mode: str = "r") -> zarr.Group:
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such Zarr group")
    return zarr.open_group(str(path), mode=mode)


def write_sample(group: zarr.Group, index: int, **arrays: np.ndarray) -> None:
    """Write one sample's arrays at ``index`` (each a whole chunk)."""
    for name, value in arrays.items():
        group[name][index] = value


def read_samples(group: zarr.Group, name: str, indices: list[int] | np.ndarray) -> np.ndarray:
    """Read the committed samples ``indices`` of array ``name``, stacked along axis 0."""
    arr = group[name]
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        return np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
    if np.all(np.diff(idx) == 1):
        return np.asarray(arr[int(idx[0]) : int(idx[-1]) + 1])
    return np.stack([np.asarray(arr[int(i)]) for i in idx])
