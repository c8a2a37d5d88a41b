"""What every stage task shares: explicit cache keys, per-store cache records, content hashes."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.filesystems import LocalFileSystem, RemoteFileSystem

from schemas.config import RunConfig
from schemas.manifests import Manifest
from storage.layout import RunLayout
from storage.locks import run_lock
from storage.paths import is_remote, store_path
from storage.store_gc import write_completed
from uniadc.geometry.letterbox import PAD_ASPECT


def cache_key(stage: str, version: str, *parts: str) -> str:
    """sha256 of the stage name, its version constant and the given canonical strings."""
    h = hashlib.sha256(f"{stage}\x00{version}".encode())
    for part in parts:
        h.update(b"\x00")
        h.update(part.encode())
    return h.hexdigest()


def artifact_key(config: RunConfig, what: str) -> str:
    """Stable Prefect artifact key ``<run name>-<what>`` (lowercase letters, digits and dashes, as Prefect
    requires), so reruns add versions of one artifact instead of new unnamed ones."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", f"{config.name}-{what}".lower())).strip("-")


def run_folder_lock(config: RunConfig):
    """The lock every flow holds on its run folder (``storage.locks``): a second run of it waits."""
    return run_lock(RunLayout.for_run(config).root)


def record_completed(config: RunConfig, manifests: Sequence[Manifest]) -> None:
    """Write the completed-run record of ``config`` (``storage.store_gc``): per stage, its folders and keys."""
    stages: dict[str, list[tuple[str, str]]] = {}
    for m in manifests:
        first = next(iter(m.uris.values()))
        stages.setdefault(m.stage, []).append((str(Path(first).parent), record_key(config, m.cache_key)))
    root = RunLayout.for_run(config).root
    write_completed(root, config.config_hash(), config.to_json(), stages)


TORCH_THREADS_ENV = "UNIADC_TORCH_THREADS"  # set on Dask workers by flows.runner.same_torch_threads


def match_submitter_threads(config: RunConfig) -> None:
    """On a Dask worker of ours: torch's intra-op thread count of the process that submitted the run, unless
    ``discriminator.num_threads`` sets one (the reductions, and so the model, depend on it)."""
    wanted = os.environ.get(TORCH_THREADS_ENV)
    if wanted and config.discriminator.num_threads is None:
        import torch

        if torch.get_num_threads() != int(wanted):
            torch.set_num_threads(int(wanted))


GPU_TAG = "gpu"  # `prefect concurrency-limit create gpu N`: at most N such task runs at once, on every worker


def gpu_tags(config: RunConfig) -> list[str]:
    """The ``gpu`` tag for regenerate when it runs a diffusion backend or the CLIP-region scorer."""
    backend = config.synthesis.resolved_backend(config.setting)
    gpu = backend in ("sd-inpaint", "brushnet") or config.selection.resolved_scorer(backend) == "clip-region"
    return [GPU_TAG] if gpu else []


def stage_options(store_root: str | Path, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``Task.with_options`` keywords that keep a stage's cache inside its store.

    The cache key is the task's explicit ``key`` parameter; both the cache records and the persisted results
    live under the store (``.cache`` and ``.results``), so a store carries its own cache: deleting it deletes
    the cache, and any worker, whatever its ``PREFECT_HOME``, can read it. Prefect accepts only saved storage
    blocks for results, so one ``LocalFileSystem`` block per store is saved (idempotently) on the API in use.
    On an object store both are ``RemoteFileSystem`` blocks (fsspec) under the URL, with the store's
    ``storage_options`` as their settings (none when the environment holds the credentials).
    """
    if is_remote(store_root):
        root = str(store_root).rstrip("/")
        settings = dict(storage_options or {})
        results: Any = RemoteFileSystem(basepath=f"{root}/.results", settings=settings)
        keys: Any = RemoteFileSystem(basepath=f"{root}/.cache", settings=settings)
    else:
        root = str(Path(store_root).resolve())
        results, keys = LocalFileSystem(basepath=f"{root}/.results"), f"{root}/.cache"
    name = "uniadc-store-" + hashlib.sha256(root.encode()).hexdigest()[:16]
    results.save(name, overwrite=True)
    policy = CacheKeyFnPolicy(cache_key_fn=key_from_params).configure(key_storage=keys)
    return {"cache_policy": policy, "result_storage": results}


class _NoTraceback(logging.Filter):
    """Console records without tracebacks: the exception's one-line summary stays, the stack goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or record.exc_text:
            record.exc_info, record.exc_text = None, None
        message = record.getMessage()
        cut = message.find("Traceback (most recent call last)")
        if cut >= 0:
            record.msg, record.args = message[:cut].rstrip(), ()
        return True


def quiet_task_tracebacks() -> None:
    """Keep tracebacks of failed tasks out of the console (the Prefect UI and API logs keep them)."""
    from prefect.logging.configuration import PROCESS_LOGGING_CONFIG, setup_logging

    # Prefect sets its handlers up once per process (later setups are incremental), binding sys.stderr as it is
    # then: do it now only for the real stderr, not for a test runner's temporary one
    if not PROCESS_LOGGING_CONFIG and sys.stderr is sys.__stderr__:
        setup_logging()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _NoTraceback) for f in handler.filters):
            handler.addFilter(_NoTraceback())


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with store_path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def key_from_params(_ctx: Any, params: dict[str, Any]) -> str:
    """Cache key passed explicitly as the task's ``key`` parameter (computed by the flow from its inputs),
    scoped to the run folder: a stage's outputs live in its run's folder, so two runs of one store that share
    a stage's inputs (two names, one dataset) must not share its record."""
    config = params.get("config")
    if not isinstance(config, RunConfig):
        return str(params["key"])
    return record_key(config, str(params["key"]))


def record_key(config: RunConfig, key: str) -> str:
    """The name of a stage's cache record and persisted result in the store: its key scoped to the run."""
    return hashlib.sha256(f"{config.name}\x00{key}".encode()).hexdigest()


def canvas_chunk(rows, config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """Test rows -> (images (n, S, S, 3) uint8, ground truth (n, S, S) uint8) on the canvases evaluation
    scores them on (``dataset.resize``), for reports next to the stored maps."""
    from storage.evaluation import read_test_chunk
    from uniadc.geometry import canvas

    fitted = [canvas(im, gt, config.image_size, config.dataset.resize) for im, gt in read_test_chunk(rows)]
    size = config.image_size
    if not fitted:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8)
    return np.stack([f[0] for f in fitted]), np.stack([f[1] for f in fitted])


def geometry_line(config: RunConfig, counts: dict[str, int], metrics: bool = True) -> str:
    """Which geometry the images got (``dataset.resize``: image counts per mode) and, with ``metrics``, the
    resolution the metrics are computed at."""
    text = (
        f"dataset.resize {config.dataset.resize} ({', '.join(f'{m} {c}' for m, c in sorted(counts.items()))})"
    )
    if config.dataset.resize == "auto" and "pad" in counts:
        text += f", auto letterboxes images more elongated than 1:{PAD_ASPECT}"
    if not metrics:
        return text
    size = config.image_size
    where = (
        f"{size}x{size}" if set(counts) <= {"squash"} else f"long side {size}, aspect kept, padding left out"
    )
    return f"{text}; metrics at {where}"
