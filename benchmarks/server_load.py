"""Load test of the Prefect server under our own flows: SQLite against PostgreSQL, measured in one run.

For each backend: a fresh server (``flows.server.start``, access log on), a process work pool with ``--workers``
workers (``--limit`` concurrent flow runs each), a deployment of ``regenerate-from-file``; then ``--runs``
regenerate runs of a tiny demo config, each into its own store, submitted at once from as many threads, plus one
run on the Dask runner (a LocalCluster of 2 worker processes). While they run, the server's RSS (its whole
process group) is sampled. Reported per backend: runs completed / failed, p50/p95 flow-run wall time and queue
wait, API errors (5xx in the server's access log, ``database is locked`` anywhere in the server's and workers'
logs, and client-side errors the workers logged), and peak server RSS.

Usage: ``python benchmarks/server_load.py [--runs 20] [--workers 4] [--limit 3] [--backends sqlite,postgres]``
(``make bench-server``). Writes ``benchmarks/results/server_load.{json,md}`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

from flows import server  # noqa: E402
from storage.layout import benchmark_meta  # noqa: E402

DEPLOYMENT = "regenerate-from-file/load"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
ACCESS_5XX = re.compile(r'"(\w+) (/api/[^ ?"]*)[^"]*" (5\d\d)\b')
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CLIENT_ERRORS = re.compile(
    r"database is locked|Server error '5\d\d|HTTPStatusError|ReadTimeout|ConnectError|Error logging to API"
)


def tiny_dataset(work: Path) -> Path:
    from storage.demo import build_demo_dataset

    root = work / "data"
    build_demo_dataset(
        root, image_size=64, n_train=3, n_test_good=2, n_test_per_defect=2, image_classes=("brick",)
    )
    config = work / "tiny.yaml"
    config.write_text(
        "name: load\n"
        f"dataset: {{kind: demo, root: {root}, image_class: brick}}\n"
        "k_normal: 2\nseed: 0\nimage_size: 64\n"
        f"store: {work / 'stores' / 'default'}\n"
        "synthesis: {samples_per_category: 4, masks_per_sample: 3, noise_factors: [0.5]}\n"
    )
    return config


def fresh_postgres(url: str) -> None:
    """Drop and recreate the benchmark's database so both backends start empty."""
    server.drop_postgres_database(url)
    server.ensure_postgres_database(url)


def deploy_load(api_url: str, pool: str) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import regenerate_from_file

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        regenerate_from_file.from_source(
            source=str(ROOT), entrypoint="flows/deploy.py:regenerate_from_file"
        ).deploy(name="load", work_pool_name=pool, print_next_steps=False)


def submit(api_url: str, parameters: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Create one flow run per parameter set, all at once from as many threads; (ids, submit errors)."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def one(params: dict[str, Any]) -> str:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            return str(run_deployment(DEPLOYMENT, parameters=params, timeout=0).id)

    ids, errors = [], []
    with ThreadPoolExecutor(max_workers=len(parameters)) as pool:
        for fut in [pool.submit(one, p) for p in parameters]:
            try:
                ids.append(fut.result())
            except Exception as exc:  # noqa: BLE001 - every failed submission is a measured API error
                errors.append(f"{type(exc).__name__}: {exc}")
    return ids, errors


def read_runs(api_url: str, ids: list[str]) -> list[Any]:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go() -> list[Any]:
        async with PrefectClient(api=api_url) as client:
            return await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))

    return asyncio.run(go())


def group_rss_mb(pid: int) -> float:
    """Resident memory of every process in the process group ``pid`` leads (the server and its services)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[2]) == pid:  # pgrp
                total += int(fields[21]) * 4096  # rss pages
        except (OSError, ValueError, IndexError):
            continue
    return total / 2**20


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self._stop_event = pid, every, 0.0, threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, group_rss_mb(self.pid))
            self._stop_event.wait(self.every)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def count_log_errors(folder: Path) -> dict[str, int]:
    server_log = (
        (folder / "server.log").read_text(errors="replace") if (folder / "server.log").exists() else ""
    )
    worker_text = "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob("worker-*.log")))
    failing = Counter(
        f"{m} {UUID.sub('{id}', path)} {code}" for m, path, code in ACCESS_5XX.findall(server_log)
    )
    return {
        "http_5xx": sum(failing.values()),
        "http_5xx_by_route": dict(failing.most_common(5)),
        "requests": server_log.count('HTTP/1.1"'),
        "database_locked": server_log.count("database is locked") + worker_text.count("database is locked"),
        "server_tracebacks": server_log.count("Traceback (most recent call last)"),
        "worker_client_errors": len(CLIENT_ERRORS.findall(worker_text)),
    }


def measure(
    backend: str,
    work: Path,
    config: Path,
    runs: int,
    workers: int,
    limit: int,
    dask: bool = True,
    timeout: float = 1800.0,
    postgres_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/uniadc_server_load",
    say=print,
) -> dict[str, Any]:
    home = work / f"home-{backend}"
    url = None
    if backend == "postgres":
        url = postgres_url
        fresh_postgres(url)
    t0 = time.perf_counter()
    state = server.start(
        backend, url, port=server.free_port(), workers=workers, deploy=False, worker_limit=limit, home=home,
        say=lambda line: say(f"  [{backend}] {line}"), log_level="INFO",
    )  # fmt: skip
    startup_s = time.perf_counter() - t0
    sampler = RssSampler(state.server.pid)
    sampler.start()
    try:
        deploy_load(state.api_url, state.pool)
        stores = work / "stores" / backend
        params = [
            {"config_path": str(config), "overrides": [f"store={stores / f'run-{i:03d}'}"]}
            for i in range(runs)
        ]
        if dask:
            params.append(
                {
                    "config_path": str(config),
                    "overrides": [f"store={stores / 'dask'}", "runner.kind=dask", "runner.n_workers=2"],
                }
            )
        t_submit = time.perf_counter()
        ids, submit_errors = submit(state.api_url, params)
        deadline = time.monotonic() + timeout
        flow_runs: list[Any] = []
        while time.monotonic() < deadline:
            flow_runs = read_runs(state.api_url, ids)
            done = sum(r.state_type.value in TERMINAL for r in flow_runs)
            if done == len(ids):
                break
            time.sleep(2.0)
        total_s = time.perf_counter() - t_submit
    finally:
        peak = sampler.stop()
        server.stop(home=home, say=lambda line: None)
    by_id = {str(r.id): r for r in flow_runs}
    dask_id = ids[-1] if dask and len(ids) == len(params) else None
    plain = [by_id[i] for i in ids if i in by_id and i != dask_id]
    walls = [(r.end_time - r.start_time).total_seconds() for r in plain if r.start_time and r.end_time]
    waits = [(r.start_time - r.created).total_seconds() for r in plain if r.start_time and r.created]
    dask_run = by_id.get(dask_id) if dask_id else None
    errors = count_log_errors(server.state_dir(home))
    return {
        "backend": backend,
        "database": server.mask_url(url) if url else "sqlite (PREFECT_HOME/prefect.db)",
        "runs": runs,
        "workers": workers,
        "limit_per_worker": limit,
        "completed": sum(r.state_type.value == "COMPLETED" for r in plain),
        "failed": sum(r.state_type.value in {"FAILED", "CRASHED", "CANCELLED"} for r in plain),
        "not_finished": runs - sum(r.state_type.value in TERMINAL for r in plain),
        "submit_errors": len(submit_errors),
        "submit_error_examples": submit_errors[:3],
        "wall_p50_s": percentile(walls, 0.5),
        "wall_p95_s": percentile(walls, 0.95),
        "queue_p50_s": percentile(waits, 0.5),
        "queue_p95_s": percentile(waits, 0.95),
        "all_done_s": total_s,
        "server_startup_s": startup_s,
        "server_rss_peak_mb": peak,
        "dask_run": None
        if dask_run is None
        else {
            "state": dask_run.state_type.value,
            "wall_s": (dask_run.end_time - dask_run.start_time).total_seconds()
            if dask_run.end_time
            else None,
        },
        **errors,
    }


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Prefect server under load: SQLite vs PostgreSQL",
        "",
        f"Measured {meta['date']} at commit {meta['commit']} on {meta['machine']} with "
        f"`{meta['command']}` (Prefect {meta['versions'].get('prefect', '?')}). Each backend: a fresh server, "
        f"{rows[0]['workers']} process workers (at most {rows[0]['limit_per_worker']} flow runs each), "
        f"{rows[0]['runs']} `regenerate` runs of a tiny demo config (3 categories × 4 samples, 64 px, distinct "
        "stores) submitted at once, plus one run on the Dask runner (LocalCluster, 2 worker processes).",
        "",
        "| backend | completed | failed | p50 / p95 flow-run wall (s) | p50 / p95 queue wait (s) | all done (s) "
        "| API 5xx | `database is locked` | worker-side API errors | requests | server RSS peak (MB) | Dask run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["dask_run"]
        dask = "n/a" if d is None else f"{d['state'].lower()} ({_f(d['wall_s'])} s)"
        lines.append(
            f"| {r['backend']} | {r['completed']}/{r['runs']} | {r['failed']} "
            f"| {_f(r['wall_p50_s'])} / {_f(r['wall_p95_s'])} | {_f(r['queue_p50_s'])} / {_f(r['queue_p95_s'])} "
            f"| {_f(r['all_done_s'])} | {r['http_5xx']} | {r['database_locked']} | {r['worker_client_errors']} "
            f"| {r['requests']} | {_f(r['server_rss_peak_mb'], '{:.0f}')} | {dask} |"
        )
    lines += [
        "",
        "Wall time is the flow run's start to end as the server recorded it (process start-up of the flow run "
        "included); queue wait is creation to start. API 5xx counts status codes in the server's access log; "
        "worker-side errors count `Server error '5xx'`, timeouts and refused connections the workers logged. "
        "Both backends share the same 2 CPU cores with the flow runs, so wall times measure the machine as much "
        "as the server.",
    ]
    for r in rows:
        if r["http_5xx_by_route"]:
            routes = ", ".join(f"`{k}` × {v}" for k, v in r["http_5xx_by_route"].items())
            lines.append(f"\n{r['backend']}: failing routes (most frequent first): {routes}")
        if r["submit_error_examples"]:
            lines.append(
                f"\n{r['backend']} submission errors (first 3): " + "; ".join(r["submit_error_examples"])
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--limit", type=int, default=3, help="concurrent flow runs per worker")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--no-dask", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "postgres" in backends and not server.postgres_reachable():
        sys.exit("PostgreSQL does not answer on 127.0.0.1:5432; run with --backends sqlite")
    with tempfile.TemporaryDirectory(prefix="uniadc-load-") as tmp:
        work = Path(tmp)
        config = tiny_dataset(work)
        rows = []
        for backend in backends:
            print(
                f"{backend}: {args.runs} runs + {0 if args.no_dask else 1} Dask run, {args.workers} workers"
            )
            row = measure(backend, work, config, args.runs, args.workers, args.limit, dask=not args.no_dask)
            print(json.dumps(row, indent=1, default=str))
            rows.append(row)
    meta = benchmark_meta("benchmarks/server_load.py", sys.argv[1:])
    md = markdown(rows, meta)
    print(md)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "server_load.json").write_text(
            json.dumps({"meta": meta, "rows": rows}, indent=1, default=str)
        )
        (RESULTS / "server_load.md").write_text(md)


if __name__ == "__main__":
    main()
