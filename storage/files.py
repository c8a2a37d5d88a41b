"""Atomic writes and confined paths: every file and folder under a store is written through here.

A file or folder is built under a temporary sibling named ``<name>.<pid>.<random>.partial`` and moved into place
with ``os.replace`` / ``os.rename`` only when complete, so a reader never sees a half-written file under its final
name, and two writers of the same file never share a temporary (each one's rename is atomic; the last one wins
and both wrote the same bytes). ``*.partial`` names are never read; ``uniadc store gc`` removes stale ones.

On an object store (``storage.paths``: a URL) there is no rename: a file is built in a local temporary and
uploaded under its final key (an object PUT is atomic), and a folder is uploaded with its top-level files last.
"""

from __future__ import annotations

import errno
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from storage.errors import StoreError
from storage.faults import crash_point
from storage.paths import fs_and_key, is_remote, remove_tree, store_path

PARTIAL_SUFFIX = ".partial"


def temp_sibling(path: str | Path) -> Path:
    """A fresh temporary name next to ``path``, unique per process and call."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; on success it is fsynced and moved into place.

    On any exception the temporary is removed and ``path`` is left as it was.
    """
    path = store_path(path)
    if is_remote(path):
        with tempfile.TemporaryDirectory(prefix="uniadc-") as local:
            tmp = Path(local) / path.name
            yield tmp
            crash_point("file-written")
            fs, key = fs_and_key(path)
            fs.put_file(str(tmp), key)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        _fsync(tmp)
        crash_point("file-written")
        os.replace(tmp, path)
    finally:
        remove_tree(tmp, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it is renamed to ``path``.

    If ``path`` already exists: with ``replace`` the old folder is swapped out and deleted (readers holding files
    of it keep them); otherwise the new folder is discarded and ``FileExistsError`` is raised (another writer got
    there first; the caller opens what it made).
    """
    path = store_path(path)
    if is_remote(path):
        with tempfile.TemporaryDirectory(prefix="uniadc-") as local:
            yield Path(local)
            _upload_dir(Path(local), path, replace)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        if replace and path.exists():
            old = temp_sibling(path)
            os.rename(path, old)
            os.rename(tmp, path)
            remove_tree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, path)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
                raise
    finally:
        remove_tree(tmp, ignore_errors=True)


def _upload_dir(local: Path, path: Path, replace: bool) -> None:
    """Upload a built folder to an object store, deepest files first and the top-level files last, so the
    folder's own metadata (a Zarr group's ``zarr.json``) appears only once everything under it is there. Without
    rename there is no atomic swap: the check for an existing folder and the upload are two steps, which is why
    an object store has one writer per category unit."""
    fs, key = fs_and_key(path)
    if fs.find(key):
        if not replace:
            raise FileExistsError(errno.EEXIST, "exists", str(path))
        remove_tree(path)
    files = sorted(
        (f for f in local.rglob("*") if f.is_file()), key=lambda f: (-len(f.relative_to(local).parts), str(f))
    )
    for i, f in enumerate(files):
        fs.put_file(str(f), f"{key}/{f.relative_to(local).as_posix()}")
        if i == 0:
            crash_point("dir-partly-uploaded")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_partial(path: str | Path) -> bool:
    """True for a ``*.partial`` temporary whose writer is gone: its pid is not running (or, for the old fixed
    ``<name>.partial`` names, always). A live writer's temporary is never stale."""
    name = Path(path).name
    if not name.endswith(PARTIAL_SUFFIX):
        return False
    fields = name[: -len(PARTIAL_SUFFIX)].rsplit(".", 2)
    if len(fields) == 3 and fields[1].isdigit() and len(fields[2]) == 8:
        return not _pid_alive(int(fields[1]))
    return True


def remove_stale_partials(path: str | Path) -> list[Path]:
    """Remove the stale temporaries of ``path`` (its ``<name>.*partial`` siblings); returns what was removed."""
    if is_remote(path):
        return []  # object-store temporaries are local and die with their process
    path = Path(path)
    if not path.parent.is_dir():
        return []
    gone = [p for p in path.parent.glob(f"{path.name}.*partial") if is_stale_partial(p)]
    for p in gone:
        remove_tree(p, ignore_errors=True)
    return gone


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = store_path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    path = store_path(path)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return path


def safe_join(root: str | Path, *parts: str) -> Path:
    """``root / parts...``, refusing any part that is absolute, holds ``..`` or otherwise leaves ``root``.

    Raises:
        StoreError: naming the offending part and the root.
    """
    if is_remote(root):
        out = store_path(root)
        for part in parts:
            text = str(part)
            bits = text.split("/")
            if not text or text.startswith("/") or ".." in bits or "\x00" in text or "://" in text:
                raise StoreError(f"{text!r}: not a relative path inside {out}")
            out = out / text
        return out
    base = Path(root).resolve()
    out = base
    for part in parts:
        text = str(part)
        p = Path(text)
        if not text or p.is_absolute() or ".." in p.parts or "\x00" in text:
            raise StoreError(f"{text!r}: not a relative path inside {base}")
        out = out / p
    resolved = out.resolve()
    if resolved != base and base not in resolved.parents:
        raise StoreError(f"{'/'.join(map(str, parts))!r}: resolves outside {base} (to {resolved})")
    return out


def check_writable(folder: str | Path, what: str = "store") -> Path:
    """Prove a file can be written and renamed in ``folder`` (or, when it does not exist yet, in its nearest
    existing parent folder) without creating anything that stays; StoreError naming the folder otherwise.
    On an object store: write and delete a probe object under ``folder``."""
    if is_remote(folder):
        return _check_remote_writable(store_path(folder), what)
    folder = Path(folder).resolve()
    probe_dir = folder
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise StoreError(f"{what} {folder}: {probe_dir} is not a folder")
    try:
        probe = write_text_atomic(probe_dir / f".uniadc-write-probe.{os.getpid()}", "ok\n")
        probe.unlink()
    except OSError as exc:
        raise StoreError(f"{what} {folder}: not writable ({exc.strerror or exc} in {probe_dir})") from None
    return folder


def _check_remote_writable(folder: Path, what: str) -> Path:
    fs, key = fs_and_key(folder)
    probe = f"{key}/.uniadc-write-probe.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fs.pipe_file(probe, b"ok\n")
        fs.rm_file(probe)
    except Exception as exc:  # botocore/fsspec raise many types: credentials, endpoint, bucket, permission
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"{what} {folder}: not writable ({reason})") from None
    return folder
