"""Stage progress: the Prefect progress artifact by key reaches 100 % with a readable description, and a
non-interactive console gets a log line per tenth instead of a bar."""

from __future__ import annotations

import asyncio
import logging

from tasks.progress import StageProgress, rate_text


def test_rate_text():
    assert rate_text(0, 1.0, 10, "it") == ""
    assert rate_text(5, 1.0, 10, "it") == "5.0 it/s, ETA 1 s"
    assert rate_text(1, 4.0, 3, "img") == "4.0 s/img, ETA 8 s"
    assert rate_text(10, 2.0, 10, "it").endswith(", 2 s")


def test_progress_artifact_by_key_reaches_100(prefect_harness, caplog):
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    @task(task_run_name="work")
    def work() -> None:
        with StageProgress("t-work-progress", "work", 20, unit="it", every=0.0) as bar:
            for i in range(20):
                bar.update(i + 1, loss=1.0 / (i + 1))

    @flow
    def f() -> None:
        work()

    run_logger = logging.getLogger("prefect.task_runs")  # Prefect's run loggers do not propagate to root
    run_logger.addHandler(caplog.handler)
    try:
        f()
    finally:
        run_logger.removeHandler(caplog.handler)

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["t-work-progress"]))
            )

    (art,) = asyncio.run(read())
    assert art.type == "progress" and art.data == 100.0
    assert art.description.startswith("work: 20/20 it, loss 0.05")
    records = list(dict.fromkeys(caplog.records))  # once even when the run logger also propagates to root
    lines = [r.getMessage() for r in records if r.getMessage().startswith("work: ")]
    assert 10 <= len(lines) <= 12 and lines[-1].startswith("work: 20/20 it")  # one per tenth, not per step


def test_progress_outside_a_flow_is_silent_but_works(caplog):
    with caplog.at_level(logging.INFO, logger="uniadc"), StageProgress("k", "lib", 3) as bar:
        for i in range(3):
            bar.update(i + 1)
    assert bar.done == 3
