"""Thread runner vs Dask runner on the demo's regenerate, against one persistent server, measured in one run.

Both runs use the same server (``flows.server.start_server`` on a free port), the demo dataset and
``configs/demo.yaml`` (3 categories × ``--samples`` selected samples at 128 px); each run gets a fresh store, so
nothing is cached. Prints wall time, samples/s, the Dask/thread ratio, and whether the samples are identical
(``storage.store_check.samples_digest``). Writes ``benchmarks/results/scale.{json,md}`` unless ``--no-write``.

Usage: ``python benchmarks/scale.py [--samples 16] [--repeats 2]``.
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


def run(api: str, home: Path, data: Path, store: Path, samples: int, extra: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_API_URL=api, PREFECT_HOME=str(home), PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "flows.cli", "regenerate", "-c", str(ROOT / "configs" / "demo.yaml"),
            "--store", str(store), "--set", f"dataset.root={data}",
            "--set", f"synthesis.samples_per_category={samples}", *extra]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"regenerate failed ({' '.join(extra) or 'thread'}): {r.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
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
    print(md)
    print(f"ratio dask/thread: {ratio:.2f}")
    if not args.no_write:
        (RESULTS / "scale.json").write_text(
            json.dumps({"meta": meta, "walls": walls, "identical": identical}, indent=1)
        )
        (RESULTS / "scale.md").write_text(md)


if __name__ == "__main__":
    main()
