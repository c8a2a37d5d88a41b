"""Many image classes in one flow run: ``regenerate-all`` / ``pipeline-all`` run each class as a subflow, so a
plant's nightly deployment covers every product line; a class that fails does not stop the others, and one
summary table artifact says which ran, which failed and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.pipeline import pipeline_flow
from flows.regenerate import regenerate_flow
from flows.runner import with_runner
from schemas.config import ConfigError, RunConfig, load_run_config
from storage.priors import priors_path
from tasks.common import artifact_key


def config_for_class(base: RunConfig, image_class: str) -> RunConfig:
    """``base`` for one image class: its own run name ``<name>-<class>`` (so its own run folder and lock)."""
    data = base.model_dump(mode="json")
    data["dataset"]["image_class"] = image_class
    data["name"] = f"{base.name}-{image_class}"
    if (
        base.dataset.priors
    ):  # a priors file names one class: its sibling <class>.yaml, else the default lookup
        sibling = Path(base.dataset.priors).parent / f"{image_class}.yaml"
        data["dataset"]["priors"] = str(sibling) if sibling.is_file() else None
    return load_run_config(None, data=data)


def classes_with_priors(base: RunConfig) -> list[str]:
    """Every image-class folder under ``dataset.root`` whose priors file (default lookup) exists."""
    root = Path(base.dataset.root)
    if base.dataset.kind == "mtd":
        return ["magnetic_tile"]
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            cfg = config_for_class(base, folder.name)
        except ConfigError:
            continue  # not a valid class name
        if priors_path(cfg).is_file():
            found.append(folder.name)
    return found


def run_all(base: RunConfig, image_classes: list[str] | None, pipeline: bool) -> list[dict[str, Any]]:
    classes = list(image_classes or classes_with_priors(base))
    if not classes:
        raise ConfigError(f"dataset.root: {base.dataset.root}: no image class with a priors file")
    rows: list[dict[str, Any]] = []
    for cls in classes:
        try:
            cfg = config_for_class(base, cls)
            one = pipeline_flow if pipeline else regenerate_flow
            with_runner(
                one.with_options(flow_run_name=f"{'pipeline' if pipeline else 'regenerate'}-{cls}"), cfg
            )(cfg)
            rows.append({"image_class": cls, "state": "completed", "run": cfg.name, "reason": ""})
        except Exception as exc:  # noqa: BLE001 - one class failing must not stop the others
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            rows.append(
                {"image_class": cls, "state": "failed", "run": f"{base.name}-{cls}", "reason": reason}
            )
            print(f"{cls}: failed: {reason}")
    done = sum(r["state"] == "completed" for r in rows)
    create_table_artifact(
        rows,
        key=artifact_key(base, "all-summary"),
        description=f"{'pipeline' if pipeline else 'regenerate'} of {len(rows)} image classes: {done} completed",
    )
    print(f"{done}/{len(rows)} image classes completed" + "".join(
        f"; {r['image_class']} failed ({r['reason']})" for r in rows if r["state"] == "failed"
    ))  # fmt: skip
    return rows


@flow(name="regenerate-all", log_prints=True)
def regenerate_all(
    config_path: str, image_classes: list[str] | None = None, overrides: list[str] | None = None
) -> list[dict[str, Any]]:
    """Regenerate every listed image class (default: every class under ``dataset.root`` with a priors file)."""
    return run_all(load_run_config(config_path, overrides or []), image_classes, pipeline=False)


@flow(name="pipeline-all", log_prints=True)
def pipeline_all(
    config_path: str, image_classes: list[str] | None = None, overrides: list[str] | None = None
) -> list[dict[str, Any]]:
    """The whole pipeline for every listed image class (default: every class with a priors file)."""
    return run_all(load_run_config(config_path, overrides or []), image_classes, pipeline=True)
