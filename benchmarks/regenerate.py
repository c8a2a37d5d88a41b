"""Regenerate throughput and caching.

1. Selected samples per minute of the ``procedural`` (zero-shot) and ``cutpaste`` (few-shot, repainted, SSIM)
   paths at 256 px, 32 masks x 3 noise factors per sample, on MTD normals when ../shared/datasets/mtd exists
   (else the demo dataset), in one process and in two processes (the 2-core machine's parallelism).
2. The regenerate flow on the demo dataset twice in one store: wall time of the first and of the fully cached
   rerun, and how many task runs executed vs were served from cache.

Usage: ``python benchmarks/regenerate.py [--samples 8]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

for k, v in (
    ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    ("DO_NOT_TRACK", "1"),
    ("HF_HUB_OFFLINE", "1"),
    ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"),
    ("OMP_NUM_THREADS", "1"),
    ("OPENBLAS_NUM_THREADS", "1"),
):
    os.environ.setdefault(k, v)

ROOT = Path(__file__).resolve().parents[1]
MTD = ROOT.parent / "shared" / "datasets" / "mtd"
SIZE = 256


def _normals_and_support():
    from schemas.config import CutPasteOptions
    from schemas.priors import load_priors
    from storage.datasets import scan_dataset
    from storage.images import read_image, read_mask, resize_image, resize_mask

    if MTD.is_dir():
        priors = load_priors(ROOT / "priors" / "mtd" / "magnetic_tile.yaml")
        recs = scan_dataset("mtd", MTD, None, priors.names)
    else:
        from storage.demo import build_demo_dataset

        root = Path(tempfile.mkdtemp()) / "demo"
        build_demo_dataset(root, image_size=SIZE, image_classes=("brick",))
        priors = load_priors(root / "brick" / "priors.yaml")
        recs = scan_dataset("demo", root, "brick", priors.names)
    normals = np.stack([resize_image(read_image(r.path), SIZE) for r in recs if r.label_index == 0][:2])
    support = {}
    for p in priors.categories:
        r = next(r for r in recs if r.label_name == p.name)
        support[p.name] = (resize_image(read_image(r.path), SIZE), resize_mask(read_mask(r.mask_path), SIZE))
    return priors, normals, support, CutPasteOptions()


def _run(kind: str, n: int, seed: int) -> int:
    from schemas.config import SelectionConfig, SynthesisConfig
    from uniadc.selection import select_few_shot, select_zero_shot
    from uniadc.synthesis.cutpaste import extract_regions
    from uniadc.synthesis.registry import get_scorer, get_synthesizer

    priors, normals, support, options = _normals_and_support()
    fgs = np.ones(normals.shape[:3], bool)
    syn = get_synthesizer("procedural", SynthesisConfig())
    done = 0
    for i in range(n):
        prior = priors.categories[i % len(priors.categories)]
        rng = np.random.default_rng([seed, i])
        if kind == "procedural":
            select_zero_shot(
                normals,
                fgs,
                prior,
                (),
                syn,
                get_scorer("mask_fidelity", SelectionConfig()),
                32,
                (0.4, 0.5, 0.6),
                rng,
            )
        else:
            image, mask = support[prior.name]
            regions = extract_regions(image, mask, "s", options) or extract_regions(
                image, mask, "s", options.model_copy(update={"min_region_px": 1})
            )
            select_few_shot(
                normals,
                fgs,
                regions,
                prior,
                syn,
                get_scorer("ssim", SelectionConfig()),
                32,
                (0.4, 0.5, 0.6),
                rng,
                options,
            )
        done += 1
    return done


def throughput(kind: str, n: int) -> None:
    _normals_and_support()  # warm file cache
    t = time.perf_counter()
    _run(kind, n, 0)
    one = time.perf_counter() - t
    t = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        total = sum(pool.map(_run, [kind, kind], [n, n], [1, 2]))
    two = time.perf_counter() - t
    print(
        f"{kind:>10}: {60 * n / one:7.1f} selected samples/min in 1 process ({one / n:.2f} s each); "
        f"{60 * total / two:7.1f}/min in 2 processes  (96 candidates per sample, {SIZE} px)"
    )


def cached_rerun() -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.testing.utilities import prefect_test_harness

    from flows.regenerate import regenerate_flow
    from schemas.config import load_run_config
    from storage.demo import build_demo_dataset

    tmp = Path(tempfile.mkdtemp())
    build_demo_dataset(tmp / "demo", image_classes=("brick",))
    cfg = load_run_config(
        None,
        data={
            "name": "bench",
            "dataset": {"kind": "demo", "root": str(tmp / "demo"), "image_class": "brick"},
            "image_size": 128,
            "store": str(tmp / "store"),
        },
    )

    async def states(flow_state):
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
            )
            return [r.state.name for r in runs]

    with prefect_test_harness(server_startup_timeout=180):
        t = time.perf_counter()
        s1 = regenerate_flow(cfg, return_state=True)
        first = time.perf_counter() - t
        t = time.perf_counter()
        s2 = regenerate_flow(cfg, return_state=True)
        second = time.perf_counter() - t
        a, b = asyncio.run(states(s1)), asyncio.run(states(s2))
    print(
        f"regenerate flow, demo brick 128 px, 3 categories x 16 samples: first run {first:.1f} s "
        f"({a.count('Completed')} tasks executed); fully cached rerun {second:.1f} s "
        f"({b.count('Cached')} cached, {b.count('Completed')} executed: the contact sheet is always redrawn); "
        f"rerun/first = {second / first:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8, help="selected samples per measurement")
    args = parser.parse_args()
    print(f"data: {'MTD at ' + str(MTD) if MTD.is_dir() else 'demo dataset'}")
    throughput("procedural", args.samples)
    throughput("cutpaste", args.samples)
    cached_rerun()


if __name__ == "__main__":
    main()
