"""Flows ``train``, ``evaluate`` and ``pipeline`` (= regenerate -> train -> evaluate -> report), every stage cached."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.data import run_split
from flows.regenerate import contact_sheet_path, run_regenerate, run_support
from schemas.config import RunConfig
from schemas.manifests import Manifest
from storage.parquet import read_table
from storage.paths import store_path
from storage.priors import load_run_priors
from tasks.artifacts import publish_summary
from tasks.common import GPU_TAG, artifact_key, record_completed, run_folder_lock, stage_options
from tasks.evaluate import evaluate_key, evaluate_model
from tasks.report import write_report
from tasks.train import train_key, train_model
from uniadc.metrics import METRIC_COLUMNS, format_metrics_table


def run_train(config: RunConfig, support: Manifest, samples: list[Manifest]) -> Manifest:
    priors = load_run_priors(config)
    key = train_key(config, priors, support, samples)
    options = stage_options(config.store, config.storage_options)
    task = train_model.with_options(**options, task_run_name="train", tags=[GPU_TAG])
    return task.submit(config, priors, support, samples, key).result()


def run_evaluate(config: RunConfig, split: Manifest, model: Manifest) -> Manifest:
    priors = load_run_priors(config)
    key = evaluate_key(config, split, model)
    options = stage_options(config.store, config.storage_options)
    task = evaluate_model.with_options(**options, task_run_name="evaluate", tags=[GPU_TAG])
    manifest = task.submit(config, priors, split, model, key).result()
    table = read_table(store_path(manifest.run_dir) / manifest.uris["metrics"])
    create_table_artifact(
        [
            {k: (round(100 * v, 2) if k in METRIC_COLUMNS else v) for k, v in row.items()}
            for row in table.iter_rows(named=True)
        ],
        key=artifact_key(config, "metrics"),
        description=f"metrics (percent) of {config.name}",
    )
    print("metrics (percent) on the test split:\n" + format_metrics_table(table))
    return manifest


@flow(name="train", log_prints=True)
def train_flow(config: RunConfig) -> Manifest:
    """Train on the regenerate outputs (recomputed only when missing or stale)."""
    with run_folder_lock(config):
        split = run_split(config)
        support = run_support(config, split)
        samples = run_regenerate(config, support)
        model = run_train(config, support, samples)
        record_completed(config, [split, support, *samples, model])
        return model


def run_through_evaluate(config: RunConfig) -> tuple[Manifest, Manifest, list[Manifest], Manifest, Manifest]:
    """split -> support -> regenerate -> train -> evaluate, recorded as completed; returns their manifests."""
    split = run_split(config)
    support = run_support(config, split)
    samples = run_regenerate(config, support)
    model = run_train(config, support, samples)
    evaluation = run_evaluate(config, split, model)
    record_completed(config, [split, support, *samples, model, evaluation])
    return split, support, samples, model, evaluation


@flow(name="evaluate", log_prints=True)
def evaluate_flow(config: RunConfig) -> Manifest:
    with run_folder_lock(config):
        return run_through_evaluate(config)[-1]


@flow(name="pipeline", log_prints=True)
def pipeline_flow(config: RunConfig) -> dict[str, Manifest]:
    """regenerate -> train -> evaluate -> report.html; returns the manifests of every stage."""
    with run_folder_lock(config):
        split, support, samples, model, evaluation = run_through_evaluate(config)
        report = write_report.with_options(task_run_name="report")(
            config, load_run_priors(config), split, support, samples, model, evaluation
        )
        publish_summary(config, split, evaluation, report, str(contact_sheet_path(config)))
        print(f"report: {report}")
        return {
            "split": split,
            "support": support,
            "model": model,
            "evaluate": evaluation,
            **{f"samples/{m.key}": m for m in samples},
        }
