"""What a store still needs: completed-run records, and ``uniadc store gc`` to remove everything else.

Every flow that completes writes ``<store>/<name>/completed/<config hash>.json``: for each stage it ran, the
stage folders and full cache keys it used. A later completed flow of the same config replaces the entries of the
stages it ran and keeps the others, so after editing one category's prior the record points at the new
``regenerate/<category>-*`` folder and the old one is garbage.

Garbage is: stage folders (``<stage>-<key12>``, ``regenerate/<unit>-<key12>``) that no record names, cache
records and persisted results (``.cache/<key>``, ``.results/<key>``) whose key no record names (including the
randomly named ones Prefect writes for failed tasks), and temporaries (``*.partial``) whose writer is gone. The
collector holds every run folder's lock while it works, so it never races a running flow; a folder whose lock
is taken stops it with one line.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from storage.errors import StoreError
from storage.files import is_stale_partial, safe_join, write_text_atomic
from storage.locks import run_lock
from storage.paths import is_remote, remove_tree, store_path, tree_size

RECORDS = "completed"
STAGE_DIR = re.compile(r"[a-z_]+-[0-9a-f]{12}")
UNIT_DIR = re.compile(r".+-[0-9a-f]{12}")
PER_UNIT_STAGES = ("regenerate",)
KEY_FILE = re.compile(r"[0-9a-f]{64}")


def write_completed(
    run_root: str | Path, config_hash: str, config_json: str, stages: dict[str, list]
) -> Path:
    """Record the stage folders and keys a completed flow used.

    Args:
        run_root: the run folder.
        config_hash: the run config's hash (names the record).
        config_json: the config, kept in the record for people reading it.
        stages: stage name -> list of ``(folder relative to run_root, full cache key)``.
    """
    root = store_path(run_root)
    path = safe_join(root, RECORDS, f"{config_hash}.json")
    old = json.loads(path.read_text()) if path.is_file() else {"stages": {}}
    merged = dict(old.get("stages", {}))
    merged.update({name: [[str(d), k] for d, k in entries] for name, entries in stages.items()})
    record = {
        "config_hash": config_hash,
        "config": json.loads(config_json),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "stages": merged,
    }
    return write_text_atomic(path, json.dumps(record, indent=1, sort_keys=True))


def _records(run_root: Path) -> Iterator[dict]:
    folder = run_root / RECORDS
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            yield json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"{f}: unreadable completed-run record ({exc}); remove it by hand") from None


@dataclass
class GcPlan:
    """What ``store gc`` removes (paths) and keeps (referenced keys)."""

    stage_dirs: list[Path] = field(default_factory=list)
    cache_records: list[Path] = field(default_factory=list)
    results: list[Path] = field(default_factory=list)
    partials: list[Path] = field(default_factory=list)
    kept_keys: set[str] = field(default_factory=set)

    @property
    def paths(self) -> list[Path]:
        return [*self.stage_dirs, *self.cache_records, *self.results, *self.partials]


def _run_folders(store: Path) -> list[Path]:
    return sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))


def _stage_dirs(run_root: Path) -> Iterable[Path]:
    for p in run_root.iterdir():
        if p.is_dir() and STAGE_DIR.fullmatch(p.name):
            yield p
        elif p.is_dir() and p.name in PER_UNIT_STAGES:
            yield from (u for u in p.iterdir() if u.is_dir() and UNIT_DIR.fullmatch(u.name))


def _same(path: Path) -> str:
    """A comparable name of a folder: resolved locally, the URL itself on an object store."""
    return str(path) if is_remote(path) else str(path.resolve())


def plan_gc(store: str | Path) -> GcPlan:
    """Decide what is garbage in ``store`` (reads only)."""
    store = store_path(store)
    if not store.is_dir():
        raise StoreError(f"--store {store}: no such store folder")
    plan = GcPlan()
    for run_root in _run_folders(store):
        keep: set[str] = set()
        for record in _records(run_root):
            for entries in record.get("stages", {}).values():
                for folder, key in entries:
                    keep.add(_same(run_root / folder))
                    plan.kept_keys.add(key)
        plan.stage_dirs += [d for d in sorted(_stage_dirs(run_root)) if _same(d) not in keep]
    for sub, out in ((".cache", plan.cache_records), (".results", plan.results)):
        folder = store / sub
        if folder.is_dir():
            out += sorted(p for p in folder.iterdir() if p.name not in plan.kept_keys)
    removed = set(plan.stage_dirs)
    if is_remote(store):
        return plan  # object-store temporaries are local files of their writer
    plan.partials = sorted(
        p
        for p in store.rglob("*.partial")
        if is_stale_partial(p) and not any(parent in removed for parent in p.parents)
    )
    return plan


def collect_garbage(store: str | Path, dry_run: bool = False) -> tuple[GcPlan, int]:
    """Remove the garbage of ``store`` (see the module docstring); returns the plan and the bytes it held.

    Raises:
        StoreError: the store is missing, a record is unreadable, or a run folder is being written.
    """
    store = store_path(store)
    store = store if is_remote(store) else store.resolve()
    if not store.is_dir():
        raise StoreError(f"--store {store}: no such store folder")
    with ExitStack() as locks:
        for run_root in _run_folders(store):
            locks.enter_context(run_lock(run_root, wait=False))
        plan = plan_gc(store)
        size = sum(tree_size(p) for p in plan.paths)
        if not dry_run:
            for p in plan.paths:
                remove_tree(p)
    return plan, size
