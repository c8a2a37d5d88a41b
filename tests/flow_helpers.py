"""Reading task-run states of a flow run from the Prefect API (for cache assertions)."""

from __future__ import annotations

import asyncio

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId


def task_states(flow_state) -> dict[str, str]:
    """task run name -> state name ("Completed", "Cached", ...) for the flow run behind ``flow_state``."""

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
            )
            return {r.name: r.state.name for r in runs}

    return asyncio.run(read())
