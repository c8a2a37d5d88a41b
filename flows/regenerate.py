"""Flow ``regenerate``: split -> support -> one cached task per category -> contact sheet + artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed

from flows.data import run_split
from schemas.config import RunConfig
from schemas.manifests import Manifest
from storage.layout import RunLayout
from storage.priors import load_run_priors
from tasks.artifacts import publish_samples
from tasks.common import artifact_key, gpu_tags, record_completed, run_folder_lock, stage_options
from tasks.contact_sheet import write_contact_sheet
from tasks.regenerate import category_key, regenerate_category
from tasks.support import prepare_support, support_key


def run_support(config: RunConfig, split: Manifest) -> Manifest:
    key = support_key(config, split)
    options = stage_options(config.store, config.storage_options)
    return (
        prepare_support.with_options(**options, task_run_name="support").submit(config, split, key).result()
    )


def run_regenerate(config: RunConfig, support: Manifest) -> list[Manifest]:
    """Submit one task per category (independent, so a Dask runner can spread them); wait for all."""
    priors = load_run_priors(config)
    options = stage_options(config.store, config.storage_options)
    progress = create_progress_artifact(
        0.0,
        key=artifact_key(config, "regenerate-progress"),
        description=f"regenerate: categories of {config.name} done",
    )
    futures = []
    tags = gpu_tags(config)
    for name in priors.names:
        key = category_key(config, priors, name, support)
        task = regenerate_category.with_options(**options, task_run_name=f"regenerate-{name}", tags=tags)
        futures.append(task.submit(config, priors, name, support, key))
    done = 0
    for _ in as_completed(futures):
        done += 1
        update_progress_artifact(progress, 100.0 * done / len(futures))
    manifests = [f.result() for f in futures]
    create_table_artifact(
        [
            {
                "category": m.key,
                "samples": m.counts["samples"],
                "mean_score": m.counts["mean_score_milli"] / 1000,
                "store": m.uris["zarr"],
            }
            for m in manifests
        ],
        key=artifact_key(config, "samples"),
        description=f"selected synthetic samples of {config.name}",
    )
    publish_samples(config, manifests)
    # the stage that owns the samples draws them, so every flow that regenerates keeps the sheet current
    write_contact_sheet.with_options(task_run_name="contact-sheet")(
        manifests, str(contact_sheet_path(config))
    )
    return manifests


def contact_sheet_path(config: RunConfig) -> Path:
    return RunLayout.for_run(config).root / "contact_sheet.png"


@flow(name="regenerate", log_prints=True)
def regenerate_flow(config: RunConfig) -> list[Manifest]:
    """Synthesise and select the training defects of every category; writes a contact sheet PNG."""
    with run_folder_lock(config):
        split = run_split(config)
        support = run_support(config, split)
        manifests = run_regenerate(config, support)
        record_completed(config, [split, support, *manifests])
        sheet = contact_sheet_path(config)
        for m in manifests:
            print(
                f"{m.key}: {m.counts['samples']} samples (mean score {m.counts['mean_score_milli'] / 1000:.3f}) "
                f"-> {m.run_dir}/{m.uris['zarr']} (made by worker {m.worker or 'unknown'})"
            )
        print(f"contact sheet: {sheet}")
        return manifests
