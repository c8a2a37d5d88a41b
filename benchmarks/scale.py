"""Thread vs Dask runner on the demo's regenerate, and a local vs S3 store per stage, measured in one run.

Both runs use the same server (``flows.server.start_server`` on a free port), the demo dataset and
``configs/demo.yaml`` (3 categories × ``--samples`` selected samples at 128 px); each run gets a fresh store, so
nothing is cached. Prints wall time, samples/s, the Dask/thread ratio, and whether the samples are identical
(``storage.store_check.samples_digest``).

Then the demo's whole pipeline (``uniadc run``) on a local store and on an S3 store (moto's server on
127.0.0.1, started in this process; the standard AWS variables point the CLI at it), fresh stores, interleaved:
per-stage task run times read from the server, the S3/local ratio per stage and in total, and whether the
samples are identical. moto answers from a Python thread of this process, so its per-request cost is higher
than a real object store's on a LAN and lower than S3 across a WAN: read the ratio as request overhead, not
as any service's latency. Writes ``benchmarks/results/scale.{json,md}`` unless ``--no-write``.

Usage: ``python benchmarks/scale.py [--samples 16] [--repeats 2] [--store-repeats 1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

from flows import server  # noqa: E402
from storage.layout import benchmark_meta  # noqa: E402
from storage.store_check import samples_digest  # noqa: E402


def run(
    api: str,
    home: Path,
    data: Path,
    store: Path | str,
    samples: int,
    extra: list[str],
    command: str = "regenerate",
    env_extra: dict[str, str] | None = None,
) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_API_URL=api, PREFECT_HOME=str(home), PYTHONPATH=str(ROOT), **(env_extra or {}))
    args = [sys.executable, "-m", "flows.cli", command, "-c", str(ROOT / "configs" / "demo.yaml"),
            "--store", str(store), "--set", f"dataset.root={data}",
            "--set", f"synthesis.samples_per_category={samples}", *extra]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{command} failed ({' '.join(extra) or store}): {r.stderr[-2000:]}")
    return wall


def stage_times(api: str) -> dict[str, float]:
    """Task run name -> seconds of the newest ``pipeline`` flow run on the server (regenerate-* summed)."""
    import asyncio

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    async def read():
        async with PrefectClient(api=api) as client:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"])),
                sort=FlowRunSort.START_TIME_DESC,
                limit=1,
            )
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[0].id]))
            )
            return runs[0], tasks

    flow_run, tasks = asyncio.run(read())
    out: dict[str, float] = {}
    for t in tasks:
        if t.start_time is None or t.end_time is None:
            continue
        name = "regenerate (3 categories, summed)" if t.name.startswith("regenerate-") else t.name
        out[name] = out.get(name, 0.0) + (t.end_time - t.start_time).total_seconds()
    out["flow run"] = flow_run.total_run_time.total_seconds()
    return out


def store_comparison(api: str, home: Path, data: Path, work: Path, samples: int, repeats: int) -> dict:
    """The demo pipeline on a local and an S3 (moto) store, ``repeats`` times each, interleaved."""
    from storage.paths import register_store
    from tests.moto_s3 import MotoS3

    times: dict[str, list[dict[str, float]]] = {"local": [], "s3 (moto)": []}
    walls: dict[str, list[float]] = {"local": [], "s3 (moto)": []}
    digests: dict[str, dict] = {}
    with MotoS3() as s3:
        bucket = s3.bucket()
        for i in range(repeats):
            for name in times:
                local = name == "local"
                store = str(work / f"store-local-{i}") if local else f"s3://{bucket}/scale-{i}"
                walls[name].append(run(api, home, data, store, samples, [], "run", {} if local else s3.env))
                times[name].append(stage_times(api))
                register_store(store, s3.options)
                digests.setdefault(name, samples_digest(f"{store}/demo-brick"))
                print(f"pipeline on {name} #{i + 1}: {walls[name][-1]:.1f} s", flush=True)
        stored = s3.filesystem().du(f"{bucket}/scale-0/demo-brick", total=True)
    picked = {k: min(v, key=lambda t: t["flow run"]) for k, v in times.items()}
    return {
        "walls": walls,
        "stages": picked,
        "identical": len({json.dumps(d, sort_keys=True) for d in digests.values()}) == 1,
        "s3_run_bytes": int(stored),
    }


def store_table(result: dict) -> list[str]:
    local, s3 = result["stages"]["local"], result["stages"]["s3 (moto)"]
    order = [
        "split",
        "support",
        "regenerate (3 categories, summed)",
        "contact-sheet",
        "train",
        "evaluate",
        "report",
    ]
    rows = [n for n in order if n in local and n in s3] + ["flow run"]
    return [
        "| stage | local (s) | S3 via moto (s) | S3 / local |",
        "|---|---|---|---|",
        *(f"| {n} | {local[n]:.2f} | {s3[n]:.2f} | {s3[n] / max(local[n], 1e-9):.2f}× |" for n in rows),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--store-repeats", type=int, default=1, help="pipeline runs per store kind (0: skip)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from storage.demo import build_demo_dataset

    with tempfile.TemporaryDirectory(prefix="uniadc-scale-") as tmp:
        work = Path(tmp)
        build_demo_dataset(work / "data", image_classes=("brick",))
        home = work / "home"
        port = server.free_port()
        proc = server.start_server(home, "127.0.0.1", port, server.resolve_database("sqlite", None, home))
        api = f"http://127.0.0.1:{port}/api"
        variants = {
            "thread": [],
            "dask (2 processes)": ["--set", "runner.kind=dask", "--set", "runner.n_workers=2"],
        }
        walls: dict[str, list[float]] = {k: [] for k in variants}
        digests: dict[str, dict] = {}
        try:
            for i in range(args.repeats):  # interleaved, so drift in machine load hits both alike
                for name, extra in variants.items():
                    store = work / f"{name.split()[0]}-{i}"
                    walls[name].append(run(api, home, work / "data", store, args.samples, extra))
                    digests.setdefault(name, samples_digest(store / "demo-brick"))
                    print(f"{name} #{i + 1}: {walls[name][-1]:.1f} s", flush=True)
            stores = (
                store_comparison(api, home, work / "data", work, args.samples, args.store_repeats)
                if args.store_repeats
                else None
            )
        finally:
            server.stop_proc(proc)
    n = 3 * args.samples
    best = {k: min(v) for k, v in walls.items()}
    identical = len({json.dumps(d, sort_keys=True) for d in digests.values()}) == 1
    meta = benchmark_meta("benchmarks/scale.py", sys.argv[1:])
    ratio = best["dask (2 processes)"] / best["thread"]
    md = "\n".join([
        "# Thread vs Dask runner (demo regenerate)",
        "",
        f"Measured {meta['date']} at commit {meta['commit']} on {meta['machine']} with `{meta['command']}`: "
        f"`uniadc regenerate` of configs/demo.yaml (3 categories × {args.samples} samples, 128 px), fresh store "
        f"each run, one persistent server, best of {args.repeats} (interleaved). Wall time includes process "
        "start-up (imports, for Dask also the LocalCluster).",
        "",
        "| runner | best wall (s) | all runs (s) | samples/s | vs thread |",
        "|---|---|---|---|---|",
        *(f"| {k} | {best[k]:.1f} | {', '.join(f'{w:.1f}' for w in v)} | {n / best[k]:.2f} | "
          f"{best[k] / best['thread']:.2f}× |" for k, v in walls.items()),  # fmt: skip
        "",
        f"Samples identical between runners: {'yes' if identical else 'NO'}.",
    ]) + "\n"  # fmt: skip
    if stores:
        md += "\n".join([
            "",
            "# Local vs S3 store (demo pipeline, per stage)",
            "",
            f"`uniadc run` of configs/demo.yaml ({args.samples} samples per category), fresh store each run, "
            f"best of {args.store_repeats} by flow-run time; S3 = moto's server on 127.0.0.1 in the benchmark "
            "process (request overhead, not a service's latency). Stage times are the task runs' durations "
            "from the server.",
            "",
            *store_table(stores),
            "",
            f"Samples identical between stores: {'yes' if stores['identical'] else 'NO'}. "
            f"The run folder on S3 holds {stores['s3_run_bytes'] / 1e6:.1f} MB.",
        ]) + "\n"  # fmt: skip
    print(md)
    print(f"ratio dask/thread: {ratio:.2f}")
    if stores:
        total = stores["stages"]["s3 (moto)"]["flow run"] / stores["stages"]["local"]["flow run"]
        print(f"ratio s3/local (flow run): {total:.2f}")
    if not args.no_write:
        (RESULTS / "scale.json").write_text(
            json.dumps({"meta": meta, "walls": walls, "identical": identical, "stores": stores}, indent=1)
        )
        (RESULTS / "scale.md").write_text(md)


if __name__ == "__main__":
    main()
