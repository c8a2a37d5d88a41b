"""Store paths: a local folder or any fsspec URL (``s3://bucket/prefix``, ``gs://``, ``az://``, ``memory://``).

Every store path in ``storage/`` goes through :func:`store_path`, which returns a ``pathlib.Path`` for local
paths (unchanged behaviour) and a ``universal_pathlib`` ``UPath`` for URLs. A ``UPath`` joins with ``/``, lists,
reads and writes like a ``Path``; what object stores lack (rename, locks, folders) is handled where it matters:

- ``storage.files.atomic_file`` builds a file locally and uploads it under its final key in one PUT (or one
  multipart upload, which also appears only when complete), so a Parquet part is visible whole or not at all.
- ``storage.files.atomic_dir`` uploads a built folder with its top-level files last, so a Zarr group's own
  ``zarr.json`` appears only after every array's metadata.
- ``storage.locks`` does not lock on object stores: one writer per category unit (see docs/scaling.md).

Credentials and endpoint: the run config's ``storage_options`` (passed to fsspec, e.g. ``endpoint_url``,
``key``, ``secret``, ``anon``), registered per store URL with :func:`register_store` by every flow and task
before it touches the store, so paths rebuilt from manifest strings (in any worker process) carry them; or, with
no options, the filesystem's own environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` for s3fs).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_OPTIONS: dict[str, dict[str, Any]] = {}  # store URL (no trailing slash) -> fsspec storage options


def url_scheme(path: str | os.PathLike) -> str:
    """``s3`` for ``s3://bucket/x``; ``""`` for a local path (``file://`` URLs count as local)."""
    if isinstance(path, PurePath):
        return ""
    proto = getattr(path, "protocol", None)
    if proto:
        proto = proto if isinstance(proto, str) else proto[0]
        return "" if proto in ("file", "local") else proto
    m = _URL.match(str(path))
    if not m or m.group(1).lower() == "file":
        return ""
    return m.group(1).lower()


def is_remote(path: str | os.PathLike) -> bool:
    return bool(url_scheme(path))


def register_store(url: str | os.PathLike, options: dict[str, Any] | None) -> None:
    """Remember the fsspec options of the store at ``url`` for every path under it built in this process."""
    if not is_remote(url):
        return
    _OPTIONS[str(url).rstrip("/")] = dict(options or {})


def options_for(url: str) -> dict[str, Any]:
    """The registered options of the longest registered store URL that ``url`` lies under ({} if none)."""
    best, found = -1, {}
    for prefix, options in _OPTIONS.items():
        if (url == prefix or url.startswith(prefix + "/")) and len(prefix) > best:
            best, found = len(prefix), options
    return found


def _local_file_url(text: str) -> str:
    return text[len("file://") :] if text.lower().startswith("file://") else text


def store_path(path: str | os.PathLike) -> Path:
    """A ``Path`` for a local path or ``file://`` URL, a ``UPath`` (with the registered options) for a URL.

    Typed as ``Path`` because a ``UPath`` offers the same methods used here (``/``, ``name``, ``parent``,
    ``exists``, ``is_dir``, ``is_file``, ``iterdir``, ``glob``, ``open``, ``read_*``/``write_*``, ``unlink``).
    """
    if isinstance(path, PurePath):
        return Path(path)
    if getattr(path, "protocol", None) is not None and hasattr(path, "fs"):
        return path  # already a UPath
    text = os.fspath(path)
    if not is_remote(text):
        return Path(_local_file_url(text))
    try:
        from upath import UPath
    except ImportError as exc:  # pragma: no cover - declared in the s3 extra
        raise ImportError(f"{text}: a store URL needs universal-pathlib (pip install 'uniadc[s3]')") from exc
    text = text.rstrip("/")
    # no listings cache: other processes (Dask workers, a resumed run) write under the same prefix, and a
    # cached folder listing would answer "no such file" for what they wrote since
    return UPath(text, **{"use_listings_cache": False, **options_for(text)})


def fs_and_key(path: str | os.PathLike) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of a remote store path."""
    p = store_path(path)
    return p.fs, p.path


def remove_tree(path: str | os.PathLike, ignore_errors: bool = False) -> None:
    """Remove a file or a folder with everything under it (missing: nothing); ``ignore_errors`` for best-effort
    cleanup of temporaries."""
    import shutil

    p = store_path(path)
    if is_remote(p):
        fs, key = fs_and_key(p)
        if fs.exists(key):
            fs.rm(key, recursive=True)
        return
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=ignore_errors)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)


def tree_size(path: str | os.PathLike) -> int:
    """Bytes held by a file or a folder tree."""
    p = store_path(path)
    if is_remote(p):
        fs, key = fs_and_key(p)
        return int(fs.du(key, total=True)) if fs.exists(key) else 0
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


@contextmanager
def local_copy(path: str | os.PathLike) -> Iterator[Path]:
    """A local file with ``path``'s content for readers that need one (safetensors memory-maps its file): the
    file itself when local, a temporary download (removed afterwards) from an object store."""
    p = store_path(path)
    if not is_remote(p):
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="uniadc-") as local:
        target = Path(local) / p.name
        fs, key = fs_and_key(p)
        fs.get_file(key, str(target))
        yield target
