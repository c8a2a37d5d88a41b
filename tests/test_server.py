"""The monitored setup: ``uniadc server start/stop/status`` on SQLite and PostgreSQL, runs reporting into it,
the server under a small load of deployed runs, and the Dask runner against the thread runner."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from flows import server

ROOT = Path(__file__).resolve().parents[1]
UNIADC = [sys.executable, "-m", "flows.cli"]
needs_postgres = pytest.mark.skipif(
    not server.postgres_reachable(), reason="no PostgreSQL answers on 127.0.0.1:5432"
)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(ROOT), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def _cli(args: list[str], home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*UNIADC, *args], cwd=ROOT, env=_env(home), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from benchmarks.server_load import tiny_dataset

    return tiny_dataset(tmp_path_factory.mktemp("server"))


def test_database_choice_errors_are_one_line(tmp_path):
    assert server.resolve_database("sqlite", None, tmp_path).endswith(f"{tmp_path}/prefect.db")
    assert server.resolve_database("postgres", None, tmp_path) == server.DEFAULT_POSTGRES_URL
    with pytest.raises(server.ServerError, match="--database: 'mysql' is not one of sqlite, postgres"):
        server.resolve_database("mysql", None, tmp_path)
    with pytest.raises(server.ServerError, match="is not a postgres URL"):
        server.resolve_database("postgres", "sqlite+aiosqlite:///x.db", tmp_path)
    with pytest.raises(server.ServerError, match="is not a database URL"):
        server.resolve_database("postgres", "no url", tmp_path)
    masked = server.mask_url("postgresql+asyncpg://u:secret@127.0.0.1:5432/db")
    assert "secret" not in masked and "***" in masked
    with pytest.raises(server.ServerError, match="database name"):
        server.ensure_postgres_database("postgresql+asyncpg://postgres@127.0.0.1:5432/bad-name;drop")


def test_unreachable_postgres_fails_before_anything_starts(tmp_path):
    port = server.free_port()
    r = _cli(["server", "start", "--database", "postgres", "--port", str(port), "--database-url",
              f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x"], tmp_path)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and f"cannot reach PostgreSQL at 127.0.0.1:{port}" in r.stderr
    assert server.read_state(tmp_path) is None


def test_status_and_stop_with_nothing_started(tmp_path):
    r = _cli(["server", "status"], tmp_path)
    assert r.returncode == 1 and "no server recorded" in r.stdout
    r = _cli(["server", "stop"], tmp_path)
    assert r.returncode == 0 and "no server recorded" in r.stdout


def test_stop_never_signals_a_recycled_pid(tmp_path):
    me = server.Proc(pid=os.getpid(), started=server.proc_start_time(os.getpid()) + 1, log="")
    assert not me.alive()  # same PID, other start time: not the process that was recorded
    assert server.stop_proc(me) is False


def _flow_runs(api_url: str, name: str) -> list:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def go():
        async with PrefectClient(api=api_url) as client:
            return await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])))

    return asyncio.run(go())


@pytest.mark.slow
@needs_postgres
def test_postgres_server_start_report_load_and_stop(tmp_path, tiny):
    """`server start --database postgres` creates the database, is idempotent, a CLI run reports into it, four
    deployed runs on two workers complete with no API error, and `server stop` ends exactly what it started."""
    from benchmarks.server_load import count_log_errors, deploy_load, read_runs, submit

    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/uniadc_test_{uuid.uuid4().hex[:8]}"
    home = tmp_path / "home"
    port = str(server.free_port())
    start = ["server", "start", "--database", "postgres", "--database-url", url, "--port", port]
    try:
        r = _cli([*start, "--workers", "2", "--no-deploy"], home)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "created PostgreSQL database" in r.stdout and f"UI: http://127.0.0.1:{port}" in r.stdout
        state = server.read_state(home)
        pids = [state.server.pid, *(w.pid for w in state.workers)]
        r = _cli([*start, "--workers", "2", "--no-deploy"], home)  # idempotent: same processes kept
        assert r.returncode == 0 and "already running" in r.stdout, r.stdout + r.stderr
        again = server.read_state(home)
        assert [again.server.pid, *(w.pid for w in again.workers)] == pids
        r = _cli(["server", "start", "--database", "sqlite", "--port", port], home)
        assert r.returncode == 2 and "run `uniadc server stop` first" in r.stderr

        r = _cli(["regenerate", "-c", str(tiny), "--store", str(tmp_path / "store")], home)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"reporting to the Prefect server at http://127.0.0.1:{port}" in r.stderr
        runs = _flow_runs(state.api_url, "regenerate")
        assert [x.state_type.value for x in runs] == ["COMPLETED"]

        deploy_load(state.api_url, state.pool)
        params = [
            {"config_path": str(tiny), "overrides": [f"store={tmp_path / f'load-{i}'}"]} for i in range(4)
        ]
        ids, errors = submit(state.api_url, params)
        assert not errors and len(ids) == 4
        import time

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = read_runs(state.api_url, ids)
            if all(x.state_type.value in ("COMPLETED", "FAILED", "CRASHED") for x in done):
                break
            time.sleep(2)
        assert sorted(x.state_type.value for x in done) == ["COMPLETED"] * 4
        assert {x.work_pool_name for x in done} == {"local-proc"}
        errs = count_log_errors(server.state_dir(home))
        assert errs["database_locked"] == 0 and errs["worker_client_errors"] == 0, errs

        r = _cli(["server", "stop"], home)
        assert r.returncode == 0 and r.stdout.count("stopped") == 3, r.stdout
        assert all(server.proc_start_time(p) is None for p in pids)
        assert server.read_state(home) is None
        assert not server.api_healthy(state.api_url)
    finally:
        _cli(["server", "stop"], home)
        server.drop_postgres_database(url)


@pytest.mark.slow
def test_sqlite_server_deploys_prefect_yaml_with_absolute_paths(tmp_path):
    home = tmp_path / "home"
    try:
        r = _cli(["server", "start", "--port", str(server.free_port()), "--workers", "1"], home)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "regenerate-from-file/nightly-regenerate-demo" in r.stdout
        assert "regenerate-all/nightly-regenerate-mvtec-all" in r.stdout
        state = server.read_state(home)
        from prefect.client.orchestration import PrefectClient

        async def read():
            async with PrefectClient(api=state.api_url) as client:
                return await client.read_deployment_by_name("regenerate-from-file/nightly-regenerate-demo")

        dep = asyncio.run(read())
        assert dep.work_pool_name == "local-proc"
        assert dep.parameters["config_path"] == str(ROOT / "configs" / "demo.yaml")
        assert dep.parameters["overrides"] == [f"store={ROOT / 'runs' / 'nightly'}"]
        r = _cli(["server", "status"], home)
        assert r.returncode == 0 and ": up" in r.stdout and "worker uniadc-1" in r.stdout
    finally:
        _cli(["server", "stop"], home)


def test_dask_workers_get_the_submitters_torch_thread_count(monkeypatch):
    """Dask starts a worker's torch with one thread; the train and evaluate tasks set the submitter's count
    (passed in the LocalCluster's worker environment), unless discriminator.num_threads sets one."""
    import torch

    from flows.runner import same_torch_threads, task_runner
    from schemas.config import RunnerConfig, load_run_config
    from tasks.common import TORCH_THREADS_ENV, match_submitter_threads

    before = torch.get_num_threads()
    env = same_torch_threads()
    assert env == {TORCH_THREADS_ENV: str(before)}
    assert task_runner(RunnerConfig(kind="dask")).cluster_kwargs["env"] == env
    data = {"dataset": {"kind": "demo", "root": "/nowhere", "image_class": "brick"}}
    try:
        torch.set_num_threads(1)
        monkeypatch.setenv(TORCH_THREADS_ENV, "3")
        match_submitter_threads(load_run_config(None, data=data))
        assert torch.get_num_threads() == 3
        torch.set_num_threads(1)
        pinned = load_run_config(None, data={**data, "discriminator": {"num_threads": 2}})
        match_submitter_threads(pinned)
        assert torch.get_num_threads() == 1  # the config's own count wins (training applies it itself)
        monkeypatch.delenv(TORCH_THREADS_ENV)
        match_submitter_threads(load_run_config(None, data=data))
        assert torch.get_num_threads() == 1  # not a worker of ours: left alone
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_dask_runner_matches_the_thread_runner(tmp_path, tiny):
    """`runner.kind=dask` with no server up starts a private one, runs on a 2-process LocalCluster and writes
    the same samples as the thread runner."""
    from storage.store_check import samples_digest

    home = tmp_path / "home"
    r = _cli(
        ["regenerate", "-c", str(tiny), "--store", str(tmp_path / "dask"), "--set", "runner.kind=dask"], home
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "runner.kind=dask and no server is up" in r.stderr
    r2 = _cli(["regenerate", "-c", str(tiny), "--store", str(tmp_path / "thread")], home)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = samples_digest(tmp_path / "dask" / "load"), samples_digest(tmp_path / "thread" / "load")
    assert len(a) == 3 and a == b
    # each category's manifest names the process that made it: the categories were spread over both workers
    dask_workers = re.findall(r"\(made by worker (\S+:\d+)\)", r.stdout + r.stderr)
    thread_workers = re.findall(r"\(made by worker (\S+:\d+)\)", r2.stdout + r2.stderr)
    assert len(dask_workers) == 3 and len(set(dask_workers)) > 1, dask_workers
    assert len(thread_workers) == 3 and len(set(thread_workers)) == 1, thread_workers
    assert not set(dask_workers) & set(thread_workers)
    # Dask's INFO chatter stays out of the console; a WARNING (a worker slow to stop on a loaded machine) may not
    levels = r"(?:INFO|DEBUG)"
    chatter = re.findall(rf"\|\s*{levels}\s*\|\s*distributed\.|distributed\.\S+ - {levels} -", r.stderr)
    assert not chatter, r.stderr[-3000:]


@pytest.mark.slow
def test_gpu_tag_limit_of_one_serialises_gpu_tasks_across_runs(tmp_path, tiny, monkeypatch):
    """`prefect concurrency-limit create gpu 1`, two pipeline runs at once: the gpu-tagged task runs (train,
    evaluate) never overlap, while the untagged stages are free to."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterTags

    monkeypatch.setenv(
        "PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS", "1"
    )  # retry a slot every 1 s
    home = tmp_path / "home"
    port = server.free_port()
    proc = server.start_server(home, "127.0.0.1", port, server.resolve_database("sqlite", None, home))
    api = f"http://127.0.0.1:{port}/api"
    try:

        async def limit():
            async with PrefectClient(api=api) as client:
                await client.create_concurrency_limit(tag="gpu", concurrency_limit=1)

        asyncio.run(limit())
        env = {**_env(home), "PREFECT_API_URL": api}
        tiny_model = ["--set", "discriminator.backbone=tiny", "--set", "discriminator.text_encoder=tiny",
                      "--set", "discriminator.iterations=40", "--set", "discriminator.batch_size=4",
                      "--set", "discriminator.fusion_dim=16"]  # fmt: skip
        runs = [
            subprocess.Popen([*UNIADC, "run", "-c", str(tiny), "--store", str(tmp_path / f"s{i}"), *tiny_model],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for i in range(2)
        ]  # fmt: skip
        for p in runs:
            _, stderr = p.communicate(timeout=600)
            assert p.returncode == 0, stderr[-3000:]

        async def gpu_runs():
            async with PrefectClient(api=api) as client:
                return await client.read_task_runs(
                    task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=["gpu"]))
                )

        tagged = sorted(asyncio.run(gpu_runs()), key=lambda r: r.start_time)
        assert sorted(r.name for r in tagged) == ["evaluate", "evaluate", "train", "train"]
        for before, after in zip(tagged, tagged[1:], strict=False):
            assert after.start_time >= before.end_time, (
                before.name,
                before.end_time,
                after.name,
                after.start_time,
            )
    finally:
        server.stop_proc(proc)
