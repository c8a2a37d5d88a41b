"""Crash and concurrency loop of ``uniadc regenerate`` on the demo dataset (the store guarantees in README).

1. Two uninterrupted runs give the reference samples (digest of arrays + rows, ``storage.store_check``; they must
   agree) and the warm run's wall time T.
2. ``--kills`` trials: a fresh store, the CLI killed with SIGKILL (its whole process group, Prefect server
   included) at a uniform random time in [0.2 s, T], then one resume; a trial passes when the resume exits 0 and
   the store equals the reference with no inconsistency and no temporary left.
3. ``--pairs`` trials: a fresh store, two identical CLIs started together; a trial passes when both exit 0 (the
   second waits on the run lock and reuses the cache) and the store equals the reference.

Usage: ``python benchmarks/reliability.py [--kills 50] [--pairs 20] [--samples 8]``. The demo config runs with
``synthesis.samples_per_category`` = ``--samples`` (16 in ``configs/demo.yaml``) to keep the loop short.
Writes ``benchmarks/results/reliability.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

from storage.layout import git_sha, package_versions  # noqa: E402
from storage.store_check import sample_problems, samples_digest  # noqa: E402


def _env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }


def _start(work: Path, store: Path, demo: Path, samples: int) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "flows.cli", "regenerate", "--config", str(ROOT / "configs" / "demo.yaml"),
        "--store", str(store), "--set", f"dataset.root={demo}",
        "--set", f"synthesis.samples_per_category={samples}",
    ]  # fmt: skip
    # output to a file: a pipe would stay open in the orphaned Prefect server of a killed CLI
    log = open(work / f"log-{os.urandom(4).hex()}.txt", "w+")  # noqa: SIM115 - closed in _finish
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(work), stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    proc.log = log
    return proc


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        proc.wait(timeout=900)
    finally:
        _kill_group(proc)  # a killed CLI's ephemeral Prefect server would outlive it
    proc.log.seek(0)
    out = proc.log.read()
    proc.log.close()
    return proc.returncode, out


def _same(store: Path, reference: dict[str, str]) -> tuple[bool, str]:
    run = store / "demo-brick"
    problems = sample_problems(run)
    partials = [str(p) for p in store.rglob("*.partial")]
    digest = samples_digest(run)
    ok = not problems and not partials and digest == reference
    why = "; ".join(problems + [f"left {p}" for p in partials]) or ("" if ok else "samples differ")
    return ok, why


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="uniadc-reliability-"))
    demo = work / "demo"
    from storage.demo import build_demo_dataset

    build_demo_dataset(demo, image_classes=("brick",))

    walls = []
    for name in ("reference", "reference-warm"):  # the first run also creates the Prefect database
        t0 = time.perf_counter()
        rc, out = _finish(_start(work, work / name, demo, args.samples))
        walls.append(time.perf_counter() - t0)
        if rc != 0:
            sys.exit(f"the uninterrupted reference run failed:\n{out[-3000:]}")
    wall = min(walls)  # kill times are drawn inside a warm run's duration
    reference = samples_digest(work / "reference" / "demo-brick")
    if samples_digest(work / "reference-warm" / "demo-brick") != reference:
        sys.exit("two uninterrupted runs differ: the reference is not deterministic")
    print(f"reference run: {wall:.1f} s, {len(reference)} categories x {args.samples} samples", flush=True)

    kills = {"trials": args.kills, "identical": 0, "killed_while_running": 0, "failures": []}
    for i in range(args.kills):
        store = work / f"kill-{i}"
        at = rng.uniform(0.2, wall)
        proc = _start(work, store, demo, args.samples)
        try:
            proc.wait(timeout=at)
        except subprocess.TimeoutExpired:
            kills["killed_while_running"] += 1
        _kill_group(proc)
        _finish(proc)
        rc, out = _finish(_start(work, store, demo, args.samples))
        ok, why = _same(store, reference) if rc == 0 else (False, f"resume exit {rc}: {out.strip()[-300:]}")
        kills["identical"] += ok
        if not ok:
            kills["failures"].append({"trial": i, "kill_at_s": round(at, 2), "why": why})
        print(
            f"kill {i + 1}/{args.kills} at {at:5.1f} s: {'identical' if ok else 'FAILED ' + why}", flush=True
        )

    pairs = {"trials": args.pairs, "consistent": 0, "waited": 0, "failures": []}
    for i in range(args.pairs):
        store = work / f"pair-{i}"
        procs = [_start(work, store, demo, args.samples) for _ in range(2)]
        results = [_finish(p) for p in procs]
        codes = [rc for rc, _ in results]
        ok, why = _same(store, reference) if codes == [0, 0] else (False, f"exit codes {codes}")
        pairs["consistent"] += ok
        pairs["waited"] += any("waiting for another run" in out for _, out in results)
        if not ok:
            pairs["failures"].append({"trial": i, "why": why})
        print(f"pair {i + 1}/{args.pairs}: {'consistent' if ok else 'FAILED ' + why}", flush=True)

    result = {
        "command": "python benchmarks/reliability.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "versions": package_versions(),
        "reference_wall_s": round(wall, 1),
        "samples_per_category": args.samples,
        "kills": kills,
        "pairs": pairs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reliability.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Crash and concurrency loop (`benchmarks/reliability.py`)",
        "",
        f"`{result['command']}` on {result['date']}, commit `{result['git_sha']}`. Demo regenerate "
        f"({len(reference)} categories x {args.samples} samples, uninterrupted {wall:.1f} s).",
        "",
        f"- kill -9 at a random time, then resume: **{kills['identical']}/{kills['trials']}** byte-identical to "
        f"the uninterrupted run ({kills['killed_while_running']} killed while running, the rest after it ended)",
        f"- two identical runs at once on one store: **{pairs['consistent']}/{pairs['trials']}** consistent and "
        f"identical ({pairs['waited']} pairs printed the lock-wait line)",
    ]
    for f in kills["failures"] + pairs["failures"]:
        lines.append(f"- failure: {f}")
    (args.out / "reliability.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[4:]))
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
