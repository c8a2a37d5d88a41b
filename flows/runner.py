"""The task runner a run config asks for, applied to a flow at call time."""

from __future__ import annotations

import logging
import os
from typing import Any, TypeVar

from prefect import Flow
from prefect.task_runners import ThreadPoolTaskRunner

from schemas.config import ConfigError, RunConfig, RunnerConfig

F = TypeVar("F", bound=Flow)


def task_runner(runner: RunnerConfig) -> Any:
    if runner.kind == "thread":
        return ThreadPoolTaskRunner()
    # the scheduler, nannies and workers log every connection at INFO; keep the console for the run's own lines
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:  # pragma: no cover - prefect-dask is a declared dependency
        raise ConfigError("runner.kind: dask needs prefect-dask (pip install 'uniadc[dask]')") from exc
    if runner.address:
        return DaskTaskRunner(address=runner.address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": runner.n_workers,
            "threads_per_worker": runner.threads_per_worker,
            "processes": True,
            "dashboard_address": None,
            "env": same_torch_threads(),
        }
    )


def same_torch_threads() -> dict[str, str]:
    """Worker environment naming the torch intra-op thread count of this process
    (``tasks.common.TORCH_THREADS_ENV``, applied by the train and evaluate tasks). Dask starts its workers'
    torch with one thread, and torch's CPU reductions depend on the thread count, so a model trained on a
    worker differed in the last bits from the thread runner's (measured on the demo: P-AUC 99.60 vs 99.58,
    same samples); with the same count both runners give the same model and metrics.
    ``discriminator.num_threads`` overrides both. An external cluster (``runner.address``) keeps its own."""
    import torch

    from tasks.common import TORCH_THREADS_ENV

    return {TORCH_THREADS_ENV: str(torch.get_num_threads())}


def with_runner(flow: F, config: RunConfig) -> F:
    """``flow`` unchanged for the thread runner (its default); a copy on the configured runner otherwise."""
    if config.runner.kind == "thread":
        return flow
    return flow.with_options(task_runner=task_runner(config.runner))
