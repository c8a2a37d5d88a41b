"""Flow ``split``: check the dataset and write the seeded support/test split (cached by its key)."""

from __future__ import annotations

from prefect import flow

from schemas.config import RunConfig
from schemas.manifests import Manifest
from tasks.common import record_completed, run_folder_lock, stage_options
from tasks.split import split_dataset, split_key


def run_split(config: RunConfig) -> Manifest:
    """Submit the split task with its explicit cache key; usable inside any flow."""
    key = split_key(config)
    options = stage_options(config.store, config.storage_options)
    return split_dataset.with_options(**options, task_run_name="split").submit(config, key).result()


@flow(name="split", log_prints=True)
def split_flow(config: RunConfig) -> Manifest:
    with run_folder_lock(config):
        manifest = run_split(config)
        record_completed(config, [manifest])
        print(
            f"split: {manifest.counts['support']} support, {manifest.counts['test']} test images "
            f"-> {manifest.run_dir}/{manifest.uris['split']}"
        )
        return manifest
