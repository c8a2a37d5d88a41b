"""Inference speed at 256 px: torch eager vs the exported ONNX graph under ONNX Runtime, in one run.

The model is the offline default's shape (EfficientNet-Lite0 backbone, nearest-neighbour reference of two
demo normals with its 8 views each, fusion_dim 64, 3 categories); an untrained head runs exactly as fast as a
trained one. Each measurement runs in its own process (its peak RSS is that process's): images/s of
``predict`` for each engine at 1 and 2 threads, batch 1 and 8, and end to end (decode PNG -> predict -> write
the four output files, batch 1) at 2 threads; each the best of 3 passes. Ratios are ONNX Runtime over torch
in the same run.

Usage: ``python benchmarks/inference.py [--images 64]``. Writes ``benchmarks/results/inference.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
SIZE = 256
REPEATS = 3


def _build(work: Path) -> None:
    """Demo images at 256, a checkpoint and its ONNX export in ``work``."""
    import numpy as np

    from schemas.config import DiscriminatorConfig
    from storage.checkpoints import save_discriminator
    from storage.demo import build_demo_dataset
    from storage.images import read_image
    from storage.onnx_files import write_onnx
    from uniadc.discriminator import build_discriminator, image_features
    from uniadc.discriminator.export import INPUT_NAME, OUTPUT_NAMES, InferenceGraph, export_metadata
    from uniadc.reference import ReferenceScorer
    from uniadc.reference.calibration import Calibration
    from uniadc.reference.views import dihedral_views

    demo = work / "demo"
    build_demo_dataset(demo, image_size=SIZE, image_classes=("brick",))
    normals = np.stack([read_image(p) for p in sorted((demo / "brick" / "train" / "good").glob("*.png"))[:2]])
    model = build_discriminator(DiscriminatorConfig(), [["a thin scratch"], ["a stain"], ["a hole"]], SIZE, 0)
    views, owner, view = dihedral_views(normals)
    model.reference = ReferenceScorer.from_features(image_features(model, views), owner, view)
    model.reference.set_calibration(Calibration(0.4, 0.05, "normal_max", 16, 0), 0.4)
    save_discriminator(work / "model.safetensors", model, ["scratch", "stain", "hole"])
    import torch

    meta = export_metadata(model, ["scratch", "stain", "hole"], SIZE, "benchmark", {})
    example = torch.zeros(1, SIZE, SIZE, 3, dtype=torch.uint8)
    write_onnx(InferenceGraph(model), example, work / "model.onnx", INPUT_NAME, OUTPUT_NAMES, meta)


def _worker(work: Path, engine: str, threads: int, batch: int, n: int, end_to_end: bool) -> dict:
    import numpy as np
    import torch

    from storage.images import read_image
    from storage.prediction_io import write_prediction
    from uniadc.visualize import heatmap, overlay

    files = sorted((work / "demo" / "brick" / "test").glob("*/*.png"))
    files = (files * (n // len(files) + 1))[:n]
    torch.set_num_threads(threads)
    if engine == "torch":
        from storage.checkpoints import load_discriminator
        from uniadc.discriminator import predict, restore_discriminator

        ckpt = load_discriminator(work / "model.safetensors")
        net = restore_discriminator(
            ckpt.state, ckpt.config, ckpt.category_texts, ckpt.image_size, ckpt.seed, ckpt.backbone_sha256
        )

        def run(images):
            return predict(net, images, 0.5, batch_size=batch)
    else:
        from storage.onnx_files import read_onnx
        from uniadc.discriminator.onnx_engine import OnnxEngine

        eng = OnnxEngine(*read_onnx(work / "model.onnx"), threads=threads)

        def run(images):
            return eng.predict(images, 0.5, batch_size=batch)

    images = np.stack([read_image(f) for f in files])
    run(images[:batch])  # warm-up
    out = Path(tempfile.mkdtemp(dir=work))
    best = float("inf")
    for _ in range(
        REPEATS
    ):  # best of REPEATS: the machine is shared, the fastest pass is the least disturbed
        t0 = time.perf_counter()
        if end_to_end:
            for i, f in enumerate(files):
                image = read_image(f)
                pred = run(image[None])
                write_prediction(
                    out, f"{i:04d}", pred.anomaly_maps[0], pred.class_maps[0], heatmap(pred.anomaly_maps[0]),
                    overlay(image, pred.class_maps[0]),
                )  # fmt: skip
        else:
            for s in range(0, n, batch):
                run(images[s : s + batch])
        best = min(best, time.perf_counter() - t0)
    wall = best
    return {"images_per_s": n / wall, "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: reset at exec, unlike ru_maxrss, which a child inherits on Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work, engine, threads, batch, n, e2e = args.worker
        print(json.dumps(_worker(Path(work), engine, int(threads), int(batch), int(n), e2e == "1")))
        return
    from storage.layout import git_sha, package_versions

    work = Path(tempfile.mkdtemp(prefix="uniadc-inference-"))
    _build(work)
    size_mb = (work / "model.onnx").stat().st_size / 1e6
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    cases = [(t, b, False) for t in (1, 2) for b in (1, 8)] + [(2, 1, True)]
    rows = []
    for threads, batch, e2e in cases:
        row = {"threads": threads, "batch": batch, "end_to_end": e2e}
        for engine in ("torch", "onnx"):
            cmd = [sys.executable, __file__, "--worker", str(work), engine, str(threads), str(batch)]
            done = subprocess.run(
                [*cmd, str(args.images), "1" if e2e else "0"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            row[engine] = json.loads(done.stdout.strip().splitlines()[-1])
        row["ratio"] = row["onnx"]["images_per_s"] / row["torch"]["images_per_s"]
        rows.append(row)
        what = "end to end (read, predict, write)" if e2e else f"predict, batch {batch}"
        print(
            f"{what:34s} {threads} thread(s): torch {row['torch']['images_per_s']:6.2f} img/s "
            f"({row['torch']['peak_rss_mb']:.0f} MB), onnxruntime {row['onnx']['images_per_s']:6.2f} img/s "
            f"({row['onnx']['peak_rss_mb']:.0f} MB)  ratio {row['ratio']:.2f}x",
            flush=True,
        )
    print(f"model.onnx: {size_mb:.1f} MB")
    result = {
        "command": "python benchmarks/inference.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "versions": package_versions(),
        "image_size": SIZE,
        "onnx_mb": round(size_mb, 2),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inference.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Inference at 256 px: torch eager vs ONNX Runtime (`benchmarks/inference.py`)",
        "",
        f"`{result['command']}` on {result['date']}, commit `{result['git_sha']}`, 2 CPU cores. "
        f"model.onnx {size_mb:.1f} MB (EfficientNet-Lite0 + reference bank of 2 normals x 8 views + head).",
        "",
        "| measurement | threads | torch img/s | ORT img/s | ORT / torch | torch peak RSS MB | ORT peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        what = (
            "end to end (read, predict, write), batch 1"
            if r["end_to_end"]
            else f"predict, batch {r['batch']}"
        )
        lines.append(
            f"| {what} | {r['threads']} | {r['torch']['images_per_s']:.2f} | {r['onnx']['images_per_s']:.2f} | "
            f"{r['ratio']:.2f} | {r['torch']['peak_rss_mb']:.0f} | {r['onnx']['peak_rss_mb']:.0f} |"
        )
    (args.out / "inference.md").write_text("\n".join(lines) + "\n")
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
