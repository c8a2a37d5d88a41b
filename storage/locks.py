"""One writer per run folder: an advisory ``flock`` on ``<store>/<run name>/.lock``.

Every flow holds the lock of its run folder while it runs. A second run on the same folder (the same config
started twice, or two configs sharing a ``name``) waits for the first and then finds its stages in the cache, so
both end with the same store; with ``wait=False`` it fails at once with one line naming the holder. The kernel
drops the lock when its process dies (kill -9 included), so a crashed run never leaves the store stuck; the
lock file itself is only a name and stays.

An object store (``storage.paths``: a URL) has no locks: there the run folder is not locked, and a store is
written by one writer per category unit (one flow per run name at a time; parallel categories write disjoint
folders), which is what the scheduler (one deployment per run name, Dask tasks per category) gives.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from storage.errors import StoreError
from storage.paths import is_remote

LOCK_NAME = ".lock"
_HELD: dict[Path, int] = {}  # run folders this process holds (a flow inside a flow does not wait on itself)


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown holder"
    except OSError:
        return "unknown holder"


@contextmanager
def run_lock(
    run_root: str | Path, wait: bool = True, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the exclusive lock of ``run_root`` (created if missing) for the duration of the block.

    Args:
        run_root: the run folder ``<store>/<name>``.
        wait: block until the holder finishes; False raises StoreError when the lock is taken.
        on_wait: called once with a message before blocking (default: print it).
    """
    if is_remote(run_root):
        yield
        return
    root = Path(run_root).resolve()
    if root in _HELD:
        _HELD[root] += 1
        try:
            yield
        finally:
            _HELD[root] -= 1
        return
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise StoreError(f"{root}: another run is writing this run folder ({holder})") from None
            (on_wait or print)(f"{root}: waiting for another run to finish ({holder})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        _HELD[root] = 1
        try:
            yield
        finally:
            del _HELD[root]
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def is_locked(run_root: str | Path) -> bool:
    """True while some process holds the lock of ``run_root`` (never on an object store)."""
    if is_remote(run_root):
        return False
    path = Path(run_root) / LOCK_NAME
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
