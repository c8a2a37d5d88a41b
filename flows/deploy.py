"""Deployment entry points: flows that take a config *path* (a deployment parameter must be plain data)."""

from __future__ import annotations

from prefect import flow

from flows.regenerate import regenerate_flow
from flows.runner import with_runner
from schemas.config import load_run_config


@flow(name="regenerate-from-file", log_prints=True)
def regenerate_from_file(config_path: str, overrides: list[str] | None = None) -> int:
    """Load and validate a run config file, then run ``regenerate``; returns the number of samples written."""
    config = load_run_config(config_path, overrides or [])
    manifests = with_runner(regenerate_flow, config)(config)
    return sum(m.counts["samples"] for m in manifests)
