"""Zarr v3 arrays of a stage: preallocated, one sample per chunk, blosc-zstd.

Each array is created once with its final length and chunked one sample per chunk, so concurrent writers of
different samples never share a chunk (the measured failure mode of concurrent appends). A sample becomes visible
only when the Parquet row that points at its index is committed (``storage.parquet``); an index without a row is
garbage to be overwritten, never read.

On an object store (a URL, ``storage.paths``) the group opens through zarr's fsspec store with the store's
options; one chunk is one object, so writers of different samples still never share one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import BloscCodec

from storage.errors import StoreError
from storage.faults import crash_point
from storage.files import atomic_dir
from storage.paths import is_remote, store_path

_COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


def create_group(
    path: str | Path,
    arrays: dict[str, tuple[tuple[int, ...], str]],
    attrs: dict[str, Any],
    overwrite: bool = False,
) -> zarr.Group:
    """Create (or open, when it exists with the same layout) a group of preallocated arrays.

    The group and all its arrays are made in a temporary sibling folder and renamed into place, so a group at
    ``path`` always has every array: a run killed while creating it leaves only a ``*.partial`` folder, and a
    second writer that loses the rename opens the winner's group. A group missing arrays (from an older version
    or a hand edit) holds no committed sample and is recreated.

    Args:
        path: group folder (``*.zarr``).
        arrays: name -> (shape, dtype); the first axis is the sample axis, chunked by 1.
        attrs: group attributes (resolved config JSON, versions, git SHA).
        overwrite: start from nothing even if the group exists (the old one is swapped out atomically).
    """
    path = store_path(path)
    if path.exists() and not overwrite:
        group = _open_matching(path, arrays)
        if group is not None:
            return group
        overwrite = True
    try:
        with atomic_dir(path, replace=overwrite) as tmp:
            _build(tmp, arrays, attrs)
            crash_point("group-built")
    except FileExistsError:
        group = _open_matching(path, arrays)
        if group is None:
            raise StoreError(f"{path}: another writer created it with missing arrays") from None
        return group
    crash_point("group-created")
    return zarr.open_group(zarr_store(path), mode="r+")


def _build(path: Path, arrays: dict[str, tuple[tuple[int, ...], str]], attrs: dict[str, Any]) -> None:
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


def _open_matching(path: Path, arrays: dict[str, tuple[tuple[int, ...], str]]) -> zarr.Group | None:
    """The group at ``path`` if it has every array with the expected layout; None if it lacks some (or its
    metadata); StoreError if an array exists with another shape or dtype."""
    try:
        group = zarr.open_group(zarr_store(path), mode="r+")
    except (FileNotFoundError, ValueError, KeyError, zarr.errors.GroupNotFoundError):
        return None
    present = set(group.array_keys())
    if not set(arrays) <= present:
        return None
    for name, (shape, dtype) in arrays.items():
        if group[name].shape != tuple(shape) or str(group[name].dtype) != dtype:
            raise StoreError(f"{path}/{name}: exists with another layout; remove it or use a new store")
    return group


def zarr_store(path: str | Path, read_only: bool = False) -> Any:
    """What ``zarr.open_group`` takes for ``path``: the folder name locally, an ``FsspecStore`` for a URL."""
    path = store_path(path)
    if not is_remote(path):
        return str(path)
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(str(path), storage_options=dict(path.storage_options), read_only=read_only)


def open_group(path: str | Path, mode: str = "r") -> zarr.Group:
    path = store_path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such Zarr group")
    return zarr.open_group(zarr_store(path, read_only=mode == "r"), mode=mode)


def write_sample(group: zarr.Group, index: int, **arrays: np.ndarray) -> None:
    """Write one sample's arrays at ``index`` (each a whole chunk). An OS error (disk full, permission) is
    re-raised naming the array (zarr's own does not say which file)."""
    for name, value in arrays.items():
        try:
            group[name][index] = value
        except OSError as exc:
            if exc.filename:
                raise
            where = f"{getattr(group.store, 'root', group.store)}/{name}[{index}]"
            raise OSError(exc.errno, exc.strerror or str(exc), where) from exc


def read_samples(group: zarr.Group, name: str, indices: list[int] | np.ndarray) -> np.ndarray:
    """Read the committed samples ``indices`` of array ``name``, stacked along axis 0."""
    arr = group[name]
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        return np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
    if np.all(np.diff(idx) == 1):
        return np.asarray(arr[int(idx[0]) : int(idx[-1]) + 1])
    return np.stack([np.asarray(arr[int(i)]) for i in idx])
